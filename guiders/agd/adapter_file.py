"""AGD adapter files: safetensors (never pickle) whose metadata says what they were made for.

Tensors: the ``AdapterSet``'s flat state dict (``<block>.<tensor>``, Fourier buffers included).
Metadata (strings; JSON where structured): ``format``, ``base_fingerprint`` (the frozen model's
weights, see the host bridge), ``architecture`` (block layout, adapter kind, model class,
architecture such as unet / flux / mmdit / wan, prediction family; files written before the
transformer families have no kind: cross-attention),
``scale_range`` [lo, hi], ``adapter_config``, ``training`` (settings and results),
``parameter_count``, ``base_parameter_count`` and ``command`` (what made the file).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic_file import write_atomically
from .adapter import AdapterConfig
from .adapter_set import KINDS, AdapterSet

FORMAT = "guidance_lab.agd_adapter.v1"


@dataclass
class AdapterFile:
    adapters: AdapterSet
    base_fingerprint: str
    architecture: dict
    scale_range: "tuple[float, float]"
    training: dict = field(default_factory=dict)
    command: str = ""
    base_parameter_count: int = 0

    def metadata(self) -> dict:
        """The safetensors metadata of this file (all strings)."""
        return {
            "format": FORMAT,
            "base_fingerprint": self.base_fingerprint,
            "architecture": json.dumps({**self.architecture, "layout": self.adapters.layout,
                                        "adapter_kind": self.adapters.kind}, sort_keys=True),
            "scale_range": json.dumps([float(v) for v in self.scale_range]),
            "adapter_config": json.dumps(self.adapters.config.to_dict(), sort_keys=True),
            "training": json.dumps(self.training, sort_keys=True),
            "parameter_count": str(self.adapters.parameter_count()),
            "base_parameter_count": str(int(self.base_parameter_count)),
            "command": self.command,
        }


def save(path, adapter_file: AdapterFile) -> Path:
    """Write atomically (temporary file in the same folder, fsync, rename)."""
    from safetensors.torch import save_file

    lo, hi = (float(v) for v in adapter_file.scale_range)
    if not lo <= hi:  # load would refuse the file after all the training
        raise ValueError(f"the scale range [{lo}, {hi}] is empty; give it low to high")
    return write_atomically(path, lambda tmp: save_file(adapter_file.adapters.flat_state_dict(), str(tmp),
                                                         metadata=adapter_file.metadata()))


def _check_tensors(layout: dict, config: AdapterConfig, tensors: dict, kind: str = "cross_attention") -> None:
    """The metadata's sizes against the tensors actually in the file, before anything is built
    from them (a garbled width must not allocate gigabytes), and every tensor finite float."""
    for key, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise ValueError(f"adapter tensor {key} is {tensor.dtype}, not floating point")
        if not bool(tensor.isfinite().all()):
            raise ValueError(f"adapter tensor {key} holds NaN or inf")
    for name, dims in layout.items():
        if (len(dims) not in ((2, 3) if kind == "cross_attention" else (3,))
                or not all(isinstance(d, int) and d >= 0 for d in dims) or min(dims[:2]) < 1):
            raise ValueError(f"the recorded layout of block {name} is {list(dims)}, not positive widths "
                             f"(hidden, context[, pooled]) for {kind} adapters")
        hidden, context, pooled = (*dims, 0)[:3]
        expected = {"time_token.weight": (config.width, config.time_features),
                    "scale_token.freq": (config.fourier_features,),
                    "scale_token.mlp.0.weight": (config.mlp_hidden, config.fourier_features)}
        if kind in ("cross_attention", "block_attention"):
            expected.update({"query.weight": (config.width, hidden), "prompt_tokens.weight": (config.width, context)})
        else:
            expected.update({"out.weight": (hidden, config.mlp_hidden), "prompt_token.weight": (config.width, context)})
        if pooled:
            expected["pooled_token.weight"] = (config.width, pooled)
        for leaf, shape in expected.items():
            found = tensors.get(f"{name}.{leaf}")
            if found is None or tuple(found.shape) != shape:
                raise ValueError(f"the adapter tensors do not fit the recorded layout: the metadata says "
                                 f"{name}.{leaf} is {list(shape)}, the file holds "
                                 f"{'none' if found is None else list(found.shape)}")


def load(path) -> AdapterFile:
    """Read and check an adapter file; ValueError saying what is wrong with it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as error:  # safetensors has its own error types for truncated or garbled files
        raise ValueError(f"{path} cannot be read as safetensors ({error}); it may be truncated or "
                         "corrupted") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not an AGD adapter file (metadata 'format' is {meta.get('format')!r}, "
                         f"expected {FORMAT!r})")
    try:
        architecture = json.loads(meta["architecture"])
        layout = {name: tuple(dims) for name, dims in architecture.pop("layout").items()}
        kind = architecture.pop("adapter_kind", "cross_attention")
        if kind not in KINDS:
            raise ValueError(f"adapter kind {kind!r} is none of {KINDS}")
        config = AdapterConfig.from_dict(json.loads(meta["adapter_config"]))
        lo, hi = (float(v) for v in json.loads(meta["scale_range"]))
        training = json.loads(meta.get("training", "{}"))
        fingerprint = meta["base_fingerprint"]
        base_parameters = int(meta.get("base_parameter_count", "0"))
    except (KeyError, ValueError, TypeError, AttributeError) as error:
        raise ValueError(f"{path} has malformed or missing AGD metadata ({error!r})") from None
    if not lo <= hi:
        raise ValueError(f"{path} records an empty scale range [{lo}, {hi}]")
    try:
        _check_tensors(layout, config, tensors, kind)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    adapters = AdapterSet(layout, config, kind)
    try:
        adapters.load_flat_state_dict(tensors)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return AdapterFile(adapters, fingerprint, architecture, (lo, hi), training, meta.get("command", ""),
                       base_parameters)


__all__ = ["AdapterFile", "FORMAT", "load", "save"]
