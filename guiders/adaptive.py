"""Adaptive Guidance (Castillo et al., AAAI 2025): stop evaluating uncond once the
conditional and unconditional estimates agree.

Eq. 6 of the paper: gamma_t = cos(eps_c, eps_u) per sample. Once a sample's gamma_t
exceeds the threshold, that sample is conditional-only for the rest of the run: from
the next evaluation on its guided estimate is D_c, and D_c is also what a CFG++ sampler
re-noises it with. The step that crossed the threshold still uses the inner policy's
guidance (and hands on its D_u), since both estimates are at hand.

Batches: each sample decides for itself and its result is the one it would get alone.
ComfyUI evaluates uncond for the whole batch in one call, so the unconditional pass is
dropped only when every sample of the batch has switched; until then uncond is evaluated
(and counted) for all of them, and a switched sample ignores it for both its guided
estimate and its CFG++ hand-off (``torch.where`` per sample). Reading the decision back
costs one scalar device-to-host copy per evaluation until the whole batch has switched.

Criterion (``space``). The paper's intent is that guidance becomes redundant once the
conditional and unconditional estimates agree. With eps_k = x / sigma - (alpha / sigma) D_k
(alpha = 1 for eps and v-prediction, 1 - sigma for flow models) both noise estimates share
the state term x / sigma, which says nothing about the prompt yet dominates their cosine
wherever alpha / sigma is small; and there the guidance still matters, since the
sampler's direction (x - alpha D) / sigma differs by (alpha / sigma) (D_c - D_u).

- ``"guidance"``: gamma = 1 - ||D_c - D_u||^2 / (2 ||D_c||^2) per sample: Eq. 6 with the
  state term taken out of the estimates. For estimates of equal norm (the paper's eps
  estimates both have the norm of unit-variance noise) it equals their cosine, so the
  paper's thresholds keep their meaning; in general it says exactly how much dropping the
  guidance moves the sample: ||D_c - D_u|| = sqrt(2 (1 - gamma)) ||D_c||, which CFG scales
  by w - 1. A prompt that changes the estimate's contrast or saturation (D_u ~ k D_c)
  counts as disagreement here, where a cosine of the denoised estimates calls it agreement.
- ``"x0"``: cos(D_c, D_u), what the public ComfyUI AG node uses: direction only.
- ``"eps"``: cos(eps_c, eps_u), the paper's reading as written, kept selectable.
- ``"auto"`` (default): the criterion for the model's family, ``DEFAULT_SPACE``:
  - eps and v-prediction models (ComfyUI samples both as x = x0 + sigma eps): "guidance".
    The eps reading works where sigma_max is moderate (latent SD1.x/SDXL, the paper's
    setting), but on pixel-space and zero-terminal-SNR models x / sigma dominates at high
    sigma: on the pack's pixel-space default model the eps cosine is above 0.9998 from the
    first step and then falls, so the eps reading switches at once or never.
  - flow models (SD3, Flux): "guidance". A flow schedule starts at sigma = 1, where
    alpha = 0 and eps_c = eps_u = x exactly: the eps cosine is 1 and the eps reading
    switches at step 0 at any threshold, a silent no-op.

Before the switch the result is the inner policy's, bit for bit (``torch.where`` keeps
the unswitched samples' values exactly). An inner policy that predicts uncond instead of
evaluating it (LinearAG) is compared through its prediction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..samplers.sigma_space import noise_from_denoised, per_sample
from .cfg import CFGPolicy
from .policy import GuidancePolicy, Guided, PolicyRun, StepContext

SPACES = ("auto", "guidance", "x0", "eps")
# What "auto" means per model family; the module docstring gives the reasons.
DEFAULT_SPACE = {"eps": "guidance", "flow": "guidance"}


def cosine_per_sample(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """cos(a, b) over each flattened sample, computed in float32 or wider."""
    a, b = a.flatten(1).float(), b.flatten(1).float()
    return torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-12)


def guidance_agreement(cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
    """Eq. 6 on the denoised estimates, norm mismatch included: 1 - ||D_c - D_u||^2 / (2 ||D_c||^2)."""
    c, u = cond.flatten(1).float(), uncond.flatten(1).float()
    # ||D_c - D_u||^2 from the difference itself: ||D_c||^2 + ||D_u||^2 - 2 <D_c, D_u>
    # cancels near agreement and would lose the digits a threshold like 0.9999 needs.
    gamma = 1 - (c - u).square().sum(dim=1) / (2 * c.square().sum(dim=1)).clamp_min(1e-30)
    # Below -1 (||D_c - D_u|| > 2 ||D_c||) the decision is the same; clamping keeps the
    # plotted value in a cosine's range.
    return gamma.clamp_min(-1.0)


def resolve_space(space: str, family: str) -> str:
    """The criterion a run uses: ``space`` itself, or the family's default for "auto"."""
    return DEFAULT_SPACE.get(family, "guidance") if space == "auto" else space


def agreement(space: str, cond: torch.Tensor, uncond: torch.Tensor, step: StepContext) -> torch.Tensor:
    """gamma_t of Eq. 6 per sample, read in ``space`` (already resolved)."""
    if space == "eps":
        return cosine_per_sample(noise_from_denoised(step.x, cond, step.sigma, step.family),
                                 noise_from_denoised(step.x, uncond, step.sigma, step.family))
    if space == "x0":
        return cosine_per_sample(cond, uncond)
    return guidance_agreement(cond, uncond)


class AdaptiveRun(PolicyRun):
    def __init__(self, policy: "AdaptivePolicy", total_steps: int):
        self.policy = policy
        self.inner = policy.inner.start(total_steps)
        self.space: Optional[str] = None  # resolved at the first evaluation, which knows the family
        self.switched: Optional[torch.Tensor] = None  # per-sample bool, on the model's device
        self.switch_step: Optional[torch.Tensor] = None  # per-sample int, -1 = never
        self.all_switched = False

    def needs_uncond(self, step: StepContext) -> bool:
        if self.all_switched:
            return False
        return self.inner.needs_uncond(step)

    def guide(self, cond, uncond, step: StepContext) -> Guided:
        if self.all_switched:
            return Guided(cond, None, {"cond_only": torch.ones(cond.shape[0], device=cond.device)})
        # The inner policy runs even without an evaluated uncond: LinearAG predicts it.
        inner = self.inner.guide(cond, uncond, step)
        if inner.uncond is None:  # the inner policy is conditional-only here (CFG at w = 1)
            return inner
        if self.switched is None:
            self.space = resolve_space(self.policy.space, step.family)
            self.switched = torch.zeros(cond.shape[0], dtype=torch.bool, device=cond.device)
            self.switch_step = torch.full((cond.shape[0],), -1, dtype=torch.long, device=cond.device)
        # A sample that switched at an earlier step is conditional-only: D_c is both its
        # guided estimate and its CFG++ hand-off, exactly what it gets alone once the
        # unconditional pass is dropped, whatever the rest of the batch still needs.
        keep = per_sample(self.switched, cond)
        guided = torch.where(keep, cond, inner.denoised)
        handed = torch.where(keep, cond, inner.uncond)
        gamma = agreement(self.space, cond, inner.uncond, step)
        crossed = (gamma > self.policy.threshold) & ~self.switched
        here = torch.full_like(self.switch_step, step.index)
        self.switch_step = torch.where(crossed, here, self.switch_step)
        self.switched = self.switched | crossed
        self.all_switched = bool(self.switched.all())
        metrics = {"cosine": gamma, "cond_only": keep.reshape(-1).float(), **inner.metrics}
        return Guided(guided, handed, metrics)

    def decisions(self) -> dict:
        steps = [] if self.switch_step is None else self.switch_step.tolist()
        return {"threshold": self.policy.threshold, "space": self.space or self.policy.space,
                "switch_step": steps, "inner": self.inner.decisions()}


@dataclass(frozen=True)
class AdaptivePolicy(GuidancePolicy):
    threshold: float = 0.995
    inner: GuidancePolicy = field(default_factory=CFGPolicy)
    space: str = "auto"  # the criterion: "auto" (per family), "guidance", "x0" or "eps" (see above)
    name = "ag"

    def __post_init__(self):
        if not (math.isfinite(self.threshold) and 0.0 <= self.threshold <= 1.0):
            raise ValueError(f"Adaptive Guidance threshold must be in [0, 1], got {self.threshold!r}")
        if self.space not in SPACES:
            raise ValueError(f"Adaptive Guidance space must be one of {SPACES}, got {self.space!r}")
        if not self.inner.uses_uncond:
            raise ValueError(f"Adaptive Guidance drops the unconditional evaluation once it stops helping; the "
                             f"{self.inner.name} policy never makes one (it already evaluates once per step)")

    @property
    def scale(self) -> float:
        return getattr(self.inner, "scale", 1.0)

    def transformer_options(self) -> dict:
        return self.inner.transformer_options()

    def start(self, total_steps: int) -> AdaptiveRun:
        return AdaptiveRun(self, total_steps)

    def settings(self) -> dict:
        settings = {"threshold": self.threshold, "space": self.space, "inner": self.inner.name}
        # The inner policy's settings follow; a name already taken (an AG wrapped in an AG)
        # is prefixed, so a report never shows the inner threshold as this one's.
        for key, value in self.inner.settings().items():
            while key in settings:
                key = f"inner_{key}"
            settings[key] = value
        return settings
