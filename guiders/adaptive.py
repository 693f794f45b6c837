"""Adaptive Guidance (Castillo et al., AAAI 2025): stop evaluating uncond once the
conditional and unconditional noise estimates agree.

gamma_t = cos(eps_c, eps_u) per sample (Eq. 6 of the paper, in eps space). Once a
sample's gamma_t exceeds the threshold, that sample is conditional-only for the rest of
the run: from the next evaluation on its guided estimate is D_c. The step that crossed
the threshold still uses the inner policy's guidance, since both estimates are at hand.

Batches: each sample decides for itself, but ComfyUI evaluates uncond for the whole
batch in one call, so the unconditional pass is dropped only when every sample of the
batch has switched; until then uncond is evaluated (and counted) for all of them and
the switched samples simply ignore it. Reading the decision back costs one scalar
device-to-host copy per evaluation until the whole batch has switched.

Similarity space: ``space="eps"`` (default) is the paper's reading. Since
eps = (x - D) / sigma, at high sigma both noise estimates are dominated by the shared
x / sigma term and their cosine sits near 1 whatever the prompt does: on the pack's
pixel-space default model it is above 0.9998 from the first step and then *falls*, so
an eps-space threshold switches at step 0 or never. ``space="x0"`` compares the denoised
estimates D_c, D_u instead (what the public ComfyUI AG node does); there the cosine
rises from ~0.9 to 1 over the run as the paper describes, and the threshold is usable.

Before the switch the result is the inner policy's, bit for bit (``torch.where`` keeps
the unswitched samples' values exactly).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..samplers.sigma_space import noise_from_denoised
from .cfg import CFGPolicy
from .policy import GuidancePolicy, Guided, PolicyRun, StepContext

SPACES = ("eps", "x0")


def cosine_per_sample(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """cos(a, b) over each flattened sample, computed in float32 or wider."""
    a, b = a.flatten(1).float(), b.flatten(1).float()
    return torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-12)


class AdaptiveRun(PolicyRun):
    def __init__(self, policy: "AdaptivePolicy", total_steps: int):
        self.policy = policy
        self.inner = policy.inner.start(total_steps)
        self.switched: Optional[torch.Tensor] = None  # per-sample bool, on the model's device
        self.switch_step: Optional[torch.Tensor] = None  # per-sample int, -1 = never
        self.all_switched = False

    def needs_uncond(self, step: StepContext) -> bool:
        if self.all_switched:
            return False
        return self.inner.needs_uncond(step)

    def guide(self, cond, uncond, step: StepContext) -> Guided:
        if uncond is None:
            return Guided(cond, None, {"cond_only": torch.ones(cond.shape[0], device=cond.device)})
        batch = cond.shape[0]
        if self.switched is None:
            self.switched = torch.zeros(batch, dtype=torch.bool, device=cond.device)
            self.switch_step = torch.full((batch,), -1, dtype=torch.long, device=cond.device)
        inner = self.inner.guide(cond, uncond, step)
        keep = self.switched.reshape(-1, *([1] * (cond.ndim - 1)))
        guided = torch.where(keep, cond, inner.denoised)
        if self.policy.space == "x0":
            gamma = cosine_per_sample(cond, uncond)
        else:
            gamma = cosine_per_sample(noise_from_denoised(step.x, cond, step.sigma, step.family),
                                      noise_from_denoised(step.x, uncond, step.sigma, step.family))
        crossed = (gamma > self.policy.threshold) & ~self.switched
        self.switch_step = torch.where(crossed, torch.full_like(self.switch_step, step.index), self.switch_step)
        self.switched = self.switched | crossed
        self.all_switched = bool(self.switched.all())
        metrics = {"cosine": gamma, "cond_only": keep.reshape(-1).float(), **inner.metrics}
        return Guided(guided, inner.uncond, metrics)

    def decisions(self) -> dict:
        steps = [] if self.switch_step is None else self.switch_step.tolist()
        return {"threshold": self.policy.threshold, "switch_step": steps,
                "inner": self.inner.decisions()}


@dataclass(frozen=True)
class AdaptivePolicy(GuidancePolicy):
    threshold: float = 0.995
    inner: GuidancePolicy = field(default_factory=CFGPolicy)
    space: str = "eps"  # where the cosine is taken: "eps" (noise estimates) or "x0" (denoised)
    name = "ag"

    def __post_init__(self):
        if not (math.isfinite(self.threshold) and 0.0 <= self.threshold <= 1.0):
            raise ValueError(f"Adaptive Guidance threshold must be in [0, 1], got {self.threshold!r}")
        if self.space not in SPACES:
            raise ValueError(f"Adaptive Guidance space must be one of {SPACES}, got {self.space!r}")

    @property
    def scale(self) -> float:
        return getattr(self.inner, "scale", 1.0)

    def start(self, total_steps: int) -> AdaptiveRun:
        return AdaptiveRun(self, total_steps)

    def settings(self) -> dict:
        return {"threshold": self.threshold, "space": self.space, "inner": self.inner.name,
                **self.inner.settings()}
