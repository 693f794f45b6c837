"""LinearAG calibration files: safetensors with the settings they are valid for.

Tensors (float64): the fit's normal equations per step and history lag, ``hth`` [steps,
lags, K, K], ``hty`` [steps, lags, K], ``yty`` and ``count`` [steps, lags] (the guider
solves them for its own schedule), and ``residuals`` [steps] (relative RMS of the fit with
every step evaluated before it, for the report). Metadata (strings): format, features,
sampler, sampler_options (JSON: where the sampler function comes from and its options, e.g.
eta and s_noise), sigmas (JSON, the exact schedule), steps, cfg, family, model_fingerprint,
ridge, calibration seeds.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic_file import write_atomically
from .linear_ag import FEATURES, NormalEquations, history_lags

FORMAT = "guidance_lab.linear_ag.v2"
# v1 files held coefficients fitted on the previous step's history, predicted or not.
EARLIER_FORMATS = ("guidance_lab.linear_ag.v1",)
EQUATIONS = ("hth", "hty", "yty", "count")


@dataclass
class Calibration:
    equations: NormalEquations
    residuals: torch.Tensor
    sampler: str
    sigmas: list
    cfg: float
    family: str
    model_fingerprint: str
    ridge: float
    extra: dict
    sampler_options: dict = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    def coefficients(self, evaluate_at, guided_steps: "int | None" = None) -> torch.Tensor:
        """[steps, K]: each step's fit at the lag since the schedule's last real evaluation
        (steps at or after ``guided_steps`` are never predicted)."""
        lags = history_lags(self.steps, evaluate_at)
        if guided_steps is not None:
            lags = [lag if t < guided_steps else 1 for t, lag in enumerate(lags)]
        return self.equations.solve(self.ridge, lags)[0]

    def mismatch(self, sampler: str, sigmas: list, model_fingerprint: str,
                 sampler_options: "dict | None" = None) -> "str | None":
        """Why this calibration does not fit a run, or None when it does.

        A sampler is its function's name, where that function comes from and its options: two
        functions of one name from different places (ComfyUI's ``euler`` and the pack's, equal
        in exact arithmetic) are refused as different samplers, since the file vouches only for
        the trajectories it was fitted on; the message names the source that differs."""
        if model_fingerprint != self.model_fingerprint:
            return "it was calibrated on another model (fingerprints differ)"
        if sampler != self.sampler:
            return f"it was calibrated with sampler {self.sampler!r}, this run uses {sampler!r}"
        if sampler_options is not None:
            ours, theirs = dict(self.sampler_options), json.loads(json.dumps(sampler_options))
            if ours.get("source") != theirs.get("source"):
                return (f"it was calibrated with {_source(ours.get('source'))}'s {sampler!r}, this run's "
                        f"{sampler!r} is {_source(theirs.get('source'))}'s (a sampler function of the same "
                        f"name from elsewhere)")
            for section, what in (("options", "sampler option"), ("inpaint_options", "inpaint option")):
                mine, yours = _flat(ours.get(section) or {}), _flat(theirs.get(section) or {})
                for key in sorted(set(mine) | set(yours)):
                    if mine.get(key, _UNSET) != yours.get(key, _UNSET):
                        return (f"it was calibrated with {what} {key} = {_shown(mine.get(key, _UNSET))}, "
                                f"this run's sampler has {key} = {_shown(yours.get(key, _UNSET))}")
        if len(sigmas) != len(self.sigmas):
            return f"it was calibrated for {self.steps} steps, this run has {len(sigmas) - 1}"
        worst = max(abs(a - b) / max(abs(b), 1e-8) for a, b in zip(sigmas, self.sigmas))
        if worst > 1e-5:
            return "it was calibrated on another noise schedule (scheduler, denoise or model sampling differ)"
        return None


_UNSET = object()


def _shown(value) -> str:
    return "not set" if value is _UNSET else repr(value)


def _source(source) -> str:
    """A sampler function's source as a person reads it."""
    if source == "guidance_lab":
        return "Guidance Lab"
    if isinstance(source, str) and source.startswith("comfy"):
        return f"ComfyUI ({source})"
    return repr(source)


def _flat(options: dict, prefix: str = "") -> dict:
    """Nested options as {"eta": 1.0, "tau_func.closure.eta": ...}, so that a mismatch names the one
    that differs."""
    flat = {}
    for key, value in options.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def save(path: Path, cal: Calibration) -> None:
    """Write atomically: a crash never leaves a truncated file under the final name."""
    tensors = {**cal.equations.tensors(), "residuals": cal.residuals}
    if not (all(torch.isfinite(t).all() for t in tensors.values()) and torch.isfinite(torch.tensor(cal.cfg))):
        raise ValueError("refusing to save a calibration with non-finite sums, residuals or cfg")
    meta = {"format": FORMAT, "features": json.dumps(FEATURES), "sampler": cal.sampler,
            "sigmas": json.dumps(cal.sigmas), "steps": str(cal.steps), "cfg": repr(cal.cfg),
            "family": cal.family, "model_fingerprint": cal.model_fingerprint, "ridge": repr(cal.ridge),
            "sampler_options": json.dumps(cal.sampler_options, sort_keys=True),
            **{k: str(v) for k, v in cal.extra.items()}}
    write_atomically(path, lambda tmp: save_file({k: t.double().contiguous() for k, t in tensors.items()},
                                                 str(tmp), metadata=meta))


def load(path: Path) -> Calibration:
    """Read and check a coefficient file; ValueError says what is wrong with it."""
    try:
        tensors = load_file(str(path))
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            meta = json.loads(f.read(header_len)).get("__metadata__", {})
    except (OSError, SafetensorError, ValueError) as err:
        raise ValueError(f"cannot read {path}: {err}") from err
    if meta.get("format") in EARLIER_FORMATS:
        raise ValueError(f"{path} was made by an earlier version of LinearAG Calibrate (format "
                         f"{meta['format']!r}, coefficients chained on predicted history); calibrate again")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a Guidance Lab LinearAG file (format {meta.get('format')!r})")
    if json.loads(meta.get("features", "[]")) != list(FEATURES):
        raise ValueError(f"{path} uses features {meta.get('features')}, this version uses {list(FEATURES)}")
    if "sampler_options" not in meta:
        raise ValueError(f"{path} was made by an earlier version that did not record the sampler's "
                         f"options (eta, s_noise, ...); calibrate again")
    try:
        cal = Calibration(NormalEquations.from_tensors(tensors), tensors["residuals"], meta["sampler"],
                          json.loads(meta["sigmas"]), float(meta["cfg"]), meta["family"],
                          meta["model_fingerprint"], float(meta["ridge"]),
                          {k: v for k, v in meta.items() if k in ("seeds", "runs")},
                          json.loads(meta["sampler_options"]))
        if not isinstance(cal.sampler_options, dict):
            raise ValueError("sampler_options is not a JSON object")
        if not (math.isfinite(cal.ridge) and cal.ridge >= 0):
            raise ValueError(f"ridge {cal.ridge!r} is not a finite number >= 0")
    except (KeyError, ValueError) as err:
        raise ValueError(f"{path} lacks or garbles its metadata or tensors: {err}") from err
    eq, k = cal.equations, len(FEATURES)
    expected = {"hth": (cal.steps, eq.lags, k, k), "hty": (cal.steps, eq.lags, k), "yty": (cal.steps, eq.lags),
                "count": (cal.steps, eq.lags), "residuals": (cal.steps,)}
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape or not torch.isfinite(tensors[name]).all():
            raise ValueError(f"{path}: {name} of shape {tuple(tensors[name].shape)} does not fit {cal.steps} "
                             f"steps x {eq.lags} lags x {k} features, or is not finite")
    return cal
