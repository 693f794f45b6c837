"""EDICT and DDIM inversion through ComfyUI's sampling.

The pack's guider (``PolicyGuider``) runs the model, so model loading, conditioning,
ControlNets and model patches work as for any sampler; a KSAMPLER runs the core's loop
(samplers/edict.py, samplers/ddim_inversion.py). EDICT's coupled pair does not fit in
ComfyUI's one-tensor sampler result, so the sampler hands it back through a dict.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import comfy.model_management
import comfy.utils
import torch

from ...samplers import SAMPLERS
from ...samplers.edict import sample_edict, sample_edict_inversion
from .compat import fix_empty_latent, ksampler
from .policy_guider import PolicyGuider


@dataclass(frozen=True)
class EdictLatent:
    """The EDICT_LATENT type: the coupled pair at the top of the schedule, in the model's own
    latent space (after ``process_latent_in``), and what it was made with."""

    x: torch.Tensor
    y: torch.Tensor
    sigmas: tuple  # the descending schedule it was inverted along, as floats
    schedule: torch.Tensor  # the same, as the tensor the model saw (its dtype matters to the model)
    p: float
    model_fingerprint: str
    shape: tuple  # the latent's shape [batch, channels, height, width]
    family: str  # "eps" (eps and v-prediction) or "flow"
    guidance: str  # the guidance policy and its settings, for information
    # The batch size the pair must be sampled at to come back exactly: the one it was inverted
    # at. Model kernels round differently at other batch sizes and EDICT's inverse amplifies
    # the difference, so frames interpolated from single inversions are sampled one by one.
    # 0: the whole batch at once.
    sample_batch: int = 0

    def chunks(self) -> list:
        """(start, stop) of the batches to sample separately."""
        size = self.sample_batch or self.shape[0]
        return [(i, min(i + size, self.shape[0])) for i in range(0, self.shape[0], size)]

    def part(self, start: int, stop: int) -> "EdictLatent":
        """Samples start..stop-1 of the batch, with everything else kept."""
        return dataclasses.replace(self, x=self.x[start:stop], y=self.y[start:stop],
                                   shape=(stop - start,) + tuple(self.shape[1:]), sample_batch=0)

    def mismatch(self, sigmas: list, p: float, fingerprint: str, channels: int) -> Optional[str]:
        """Why this pair cannot be sampled back with these settings, or None."""
        problem = (model_mismatch((self.x, self.y), self.shape, self.model_fingerprint, fingerprint, channels,
                                  "sequences")
                   or schedule_mismatch(self.sigmas, sigmas))
        if problem or abs(p - self.p) <= 1e-9:
            return problem
        return (f"was inverted with mixing weight {self.p}, input 'mixing_weight' is {p}; "
                f"use the same value on both nodes")


def model_mismatch(states, shape: tuple, recorded_fingerprint: str, fingerprint: str, channels: int,
                   held: str = "states") -> Optional[str]:
    """Why an inverted pair (``states``, recording ``shape`` and the fingerprint of the model it was
    inverted with) cannot be sampled by a model of ``fingerprint`` and ``channels``, or None."""
    if any(tuple(t.shape) != tuple(shape) for t in states):
        return (f"holds {held} of shape {' / '.join(str(tuple(t.shape)) for t in states)} but records "
                f"shape {shape}; it is damaged, invert again")
    if fingerprint != recorded_fingerprint:
        return ("was inverted with another model (weights, patches such as LoRAs, or prediction type "
                "differ); connect the model it was inverted with, or invert again with this one")
    if len(shape) < 2 or shape[1] != channels:
        return (f"holds {shape[1] if len(shape) > 1 else 'no'}-channel latents of shape "
                f"{shape}, this model's latents have {channels} channels")
    return None


def schedule_mismatch(recorded: tuple, sigmas: list) -> Optional[str]:
    """Why ``sigmas`` is not the schedule a pair was inverted along (``recorded``), or None."""
    if len(sigmas) != len(recorded):
        return (f"was inverted along {len(recorded) - 1} steps, input 'sigmas' has {len(sigmas) - 1}; "
                f"connect the same schedule to both nodes")
    worst = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(sigmas, recorded))
    if worst > 1e-6:
        return (f"was inverted along another schedule (sigmas {_short(recorded)}, input 'sigmas' has "
                f"{_short(sigmas)}); connect the same schedule to both nodes")
    return None


def _short(sigmas) -> str:
    values = [f"{s:.4g}" for s in sigmas]
    return "[" + ", ".join(values if len(values) <= 6 else values[:3] + ["..."] + values[-2:]) + "]"


def progress(steps: int):
    """A sampler callback that moves the node's progress bar and stops on ComfyUI's interrupt."""
    bar = comfy.utils.ProgressBar(steps)

    def callback(step, x0, x, total_steps):
        comfy.model_management.throw_exception_if_processing_interrupted()
        bar.update_absolute(step + 1, total_steps)

    return callback


def _run(guider: PolicyGuider, sampler, latent: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """One sampling run through the guider from ``latent``, noise off, with progress and interrupt."""
    comfy.model_management.throw_exception_if_processing_interrupted()
    steps = int(sigmas.shape[0]) - 1
    return guider.sample(torch.zeros_like(latent), latent, sampler, sigmas, callback=progress(steps),
                         disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=0)


def model_latent(model, latent: dict) -> torch.Tensor:
    """A LATENT's samples as the model takes them (empty latents get the model's channel count)."""
    return fix_empty_latent(model, latent)


def edict_invert(guider: PolicyGuider, latent: torch.Tensor, sigmas: torch.Tensor, p: float,
                 state_dtype: torch.dtype) -> "tuple[torch.Tensor, torch.Tensor]":
    """The pair (x, y) at sigmas[0], from x = y = the latent at sigmas[-1], on the intermediate device."""
    result: dict = {}
    sampler = ksampler(sample_edict_inversion, {"p": p, "state_dtype": state_dtype, "result": result})
    # Ascending, with the final 0 kept (unlike FlipSigmas): ComfyUI then starts from the latent itself.
    _run(guider, sampler, latent, sigmas.flip(0))
    device = comfy.model_management.intermediate_device()
    return tuple(t.to(device) for t in result["pair"])


def edict_sample(guider: PolicyGuider, edict: EdictLatent, sigmas: torch.Tensor):
    """EDICT generation from the latent's pair: x at sigmas[-1] as a LATENT's samples (float32),
    and the final pair in the model's latent space and the state's dtype."""
    result: dict = {}
    sampler = ksampler(sample_edict, {
        "p": edict.p, "state_dtype": edict.x.dtype, "pair": (edict.x, edict.y), "result": result})
    # An all-zero start: ComfyUI leaves it unshifted and noise-scales it to zero; the sampler
    # starts from the pair instead.
    _run(guider, sampler, torch.zeros(edict.shape), sigmas)
    # Out of the model's latent space in the state's dtype, rounded to float32 once.
    return to_latent_space(guider.model_patcher, result["pair"][0]), result["pair"]


def to_latent_space(model, x: torch.Tensor) -> torch.Tensor:
    """A state in the model's latent space as a LATENT's samples (float32), e.g. EDICT's preview."""
    return model.get_model_object("latent_format").process_out(x).to(
        device=comfy.model_management.intermediate_device(), dtype=torch.float32)


def ddim_invert(guider: PolicyGuider, latent: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """DDIM inversion up the schedule; the result is a LATENT a stock sampler with noise disabled
    continues from at sigmas[0] (ComfyUI's own convention for a partly noised latent)."""
    sampler = ksampler(SAMPLERS["ddim_inversion"])
    return _run(guider, sampler, latent, sigmas.flip(0))


def flow_top_is_singular(family: str, sigmas: torch.Tensor) -> bool:
    """ComfyUI stores a flow model's partly noised latent as x / (1 - sigma): none exists at sigma 1."""
    return family == "flow" and float(sigmas[0]) >= 1.0
