"""AGD training data on disk: CFG trajectories of the frozen model [paper: CFG-trajectory training].

Every model evaluation of every CFG trajectory is one training sample: the state x on the
CFG trajectory, its sigma, the prompt, w and the CFG output ``D_u + w (D_c - D_u)`` at that
state (training on CFG trajectories, not on forward-noised data, is the paper's
point). The trajectories are sampled by the host (``nodes/bridge/agd_training.py``); this
module only stores and reads them (numpy, no ComfyUI).

On disk (``DIR``), numpy memory maps, so a data set can exceed memory:

- ``states.npy``, ``targets.npy`` [N, C, H, W] float16; ``prompts.npy`` [P, L, D] float16
  (each prompt's embedding once); ``prompt_index.npy`` [N] int32;
- ``sigmas.npy``, ``scales.npy`` [N] float32 (per-sample scalars: float16 would move the
  noise level the adapters see away from the one the teacher was evaluated at);
- samples are trajectory-major: sample ``trajectory * steps + step`` (``TrajectoryStore.row``);
- ``extra_<name>.npy`` [P, ...] float32, one per name in ``meta["extras"]`` (absent: none): the
  model's other per-prompt conditioning as its ``extra_conds`` makes it (SDXL's and SD3's pooled
  ``y``, Flux's ``guidance``), given to the student with the prompt, as the teacher had it;
  the names in ``meta["constants"]`` ({name: "int" | "float"}, Lumina 2's ``num_tokens``) are one
  number per model call, handed back per sample as a tuple of numbers;
- ``meta["text_lengths"]`` (absent: all prompts one length): each prompt's token count where the
  text encoder does not pad (Lumina 2's Gemma); ``prompts.npy`` and per-token extras are
  zero-padded to the longest, and ``batch_extras`` hands the counts back as ``TEXT_TOKENS``;
- ``meta.json``: settings, counts, the model's fingerprint; ``progress.json``: trajectories
  written so far (a killed generation resumes at the next chunk; ``meta.json`` says
  ``complete`` when it is done).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..atomic_file import write_atomically
ARRAYS = ("states", "targets", "sigmas", "scales", "prompt_index")
# The per-sample prompt token counts in ``batch_extras`` (not a model conditioning: the caller
# strips the padding with it before the model sees the prompt).
TEXT_TOKENS = "guidance_lab_text_tokens"
FORMAT = "guidance_lab.agd_trajectories.v1"
# Left free beside the data: the memory maps are sparse files, so a disk that fills while they
# are written fails a write into a mapped page (SIGBUS, the process dies), not a Python call.
DISK_RESERVE = 256 * 2**20


def write_json(path: Path, data: dict) -> None:
    """Atomically (``write_atomically``)."""
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1, sort_keys=True)))


@dataclass
class TrajectoryStore:
    """The memory-mapped arrays of one data set, opened read-only or for writing."""

    root: Path
    states: np.ndarray
    targets: np.ndarray
    sigmas: np.ndarray
    scales: np.ndarray
    prompt_index: np.ndarray
    prompts: np.ndarray
    meta: dict
    extras: dict = None  # name -> [P, ...] array (meta["extras"])

    @classmethod
    def create(cls, root: Path, meta: dict, samples: int, state_shape, prompt_shape, extra_shapes=None):
        extra_shapes = dict(extra_shapes or {})
        if sorted(extra_shapes) != sorted(meta.get("extras", [])):
            raise ValueError(f"extra conditioning {sorted(extra_shapes)} differs from meta's "
                             f"{meta.get('extras', [])}")
        shapes = {"states": ((samples, *state_shape), np.float16),
                  "targets": ((samples, *state_shape), np.float16),
                  "sigmas": ((samples,), np.float32), "scales": ((samples,), np.float32),
                  "prompt_index": ((samples,), np.int32), "prompts": (tuple(prompt_shape), np.float16),
                  **{f"extra_{name}": (tuple(shape), np.float32) for name, shape in extra_shapes.items()}}
        needed = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in shapes.values())
        existing = next((parent for parent in (root, *root.parents) if parent.exists()), Path("."))
        free = shutil.disk_usage(existing).free
        if needed + DISK_RESERVE > free:
            raise ValueError(f"the trajectories need {needed / 2**30:.2f} GiB in {root}, which has "
                             f"{free / 2**30:.2f} GiB free; use fewer prompts, sampling steps or a smaller image")
        root.mkdir(parents=True, exist_ok=True)
        mm = np.lib.format.open_memmap
        arrays = {name: mm(root / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
                  for name, (shape, dtype) in shapes.items()}
        write_json(root / "meta.json", {**meta, "complete": False})
        extras = {name: arrays.pop(f"extra_{name}") for name in extra_shapes}
        return cls(root, meta=meta, extras=extras, **arrays)

    @classmethod
    def open(cls, root: Path, mode: str = "r"):
        root = Path(root)
        meta_path = root / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"no AGD trajectories at {root} (no meta.json): run `generate` first")
        meta = json.loads(meta_path.read_text())
        arrays = {name: np.load(root / f"{name}.npy", mmap_mode=mode) for name in (*ARRAYS, "prompts")}
        extras = {name: np.load(root / f"extra_{name}.npy", mmap_mode=mode) for name in meta.get("extras", [])}
        return cls(root, meta=meta, extras=extras, **arrays)

    def __len__(self) -> int:
        return int(self.states.shape[0])

    def row(self, trajectory: int, step: int) -> int:
        """The sample of ``trajectory``'s evaluation at sampling step ``step``."""
        return trajectory * int(self.meta["steps"]) + step

    def step_of(self, rows: np.ndarray) -> np.ndarray:
        """The sampling step each sample was evaluated at (the inverse of ``row``'s layout)."""
        return np.asarray(rows) % int(self.meta["steps"])

    def batch(self, indices: np.ndarray, device) -> "tuple[torch.Tensor, ...]":
        """(x, sigma, context, scale, target) of the given samples, float32 on ``device``."""
        order = np.sort(indices)  # memory-map friendly reads; the loss is a mean, order-free

        def take(array):
            return torch.from_numpy(np.ascontiguousarray(array[order])).to(device=device, dtype=torch.float32)
        context = torch.from_numpy(np.ascontiguousarray(self.prompts[self.prompt_index[order]]))
        return (take(self.states), take(self.sigmas), context.to(device=device, dtype=torch.float32),
                take(self.scales), take(self.targets))

    def batch_extras(self, indices: np.ndarray, device) -> dict:
        """The extra conditioning of the given samples, in ``batch``'s order: {name: [n, ...] float32},
        a constant as a tuple of n numbers (its type from ``meta["constants"]``)."""
        rows = self.prompt_index[np.sort(indices)]
        constants = self.meta.get("constants", {})
        out = {}
        for name, array in (self.extras or {}).items():
            values = np.ascontiguousarray(array[rows])
            if name in constants:
                kind = int if constants[name] == "int" else float
                out[name] = tuple(kind(v) for v in values.reshape(-1).tolist())
            else:
                out[name] = torch.from_numpy(values).to(device=device, dtype=torch.float32)
        if "text_lengths" in self.meta:
            lengths = self.meta["text_lengths"]
            out[TEXT_TOKENS] = tuple(int(lengths[p]) for p in rows.tolist())
        return out


__all__ = ["ARRAYS", "FORMAT", "TEXT_TOKENS", "TrajectoryStore", "write_json"]
