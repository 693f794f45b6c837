"""One sampling run of a guidance policy: step counter, policy state and the record.

The host side (the ComfyUI GUIDER) supplies ``evaluate(need_uncond)``, which calls the
model and returns ``(D_c, D_u or None)``; everything else about a guided evaluation
lives here, so it is testable with any torch denoiser.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from .policy import GuidancePolicy, Guided, StepContext
from .record import GuidanceRecord

Evaluate = Callable[[bool], "tuple[torch.Tensor, Optional[torch.Tensor]]"]


class NonFiniteEstimate(ValueError):
    """The model returned NaN or inf; ``step`` is the first sampler step where it did."""

    def __init__(self, step: int, total_steps: int):
        super().__init__(f"the model's prediction contains NaN or inf at step {step} of {total_steps}; "
                         f"sampling stopped instead of returning a broken image (check the model's "
                         f"dtype, the latent, and the guidance settings)")
        self.step = step


class GuidedRun:
    def __init__(self, policy: GuidancePolicy, total_steps: int, batch_size: int, family: str = "eps"):
        self.policy = policy
        self.family = family
        # First step with a non-finite estimate, kept on the device (-1: none yet) and read
        # once in finish(), so watching for NaN costs no host sync inside the step loop.
        self.first_nonfinite: Optional[torch.Tensor] = None
        self.total_steps = total_steps
        self.policy_run = policy.start(total_steps)
        self.record = GuidanceRecord(policy.name, policy.settings(), batch_size, total_steps)
        self.step_index = 0

    def step_done(self, index: int) -> None:
        """The sampler finished step ``index``: later evaluations belong to the next step.

        Driven by the sampler's per-step callback, so the step index is known without
        reading sigma back from the device."""
        self.step_index = index + 1

    def count_evaluations(self, evaluations: int) -> None:
        self.record.add_nfe(self.step_index, evaluations)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, evaluate: Evaluate,
                uncond_requested: bool = False) -> "tuple[torch.Tensor, Guided]":
        """One guided evaluation; returns the conditional estimate and the policy's answer."""
        step = StepContext(self.step_index, self.total_steps, x, sigma, uncond_requested, self.family)
        need_uncond = self.policy_run.needs_uncond(step)
        cond, uncond = evaluate(need_uncond)
        self._watch(step.index, cond, uncond if need_uncond else None)
        guided = self.policy_run.guide(cond, uncond if need_uncond else None, step)
        self.record.note_call(step.index, sigma, need_uncond, guided.metrics)
        return cond, guided

    def _watch(self, index: int, *estimates) -> None:
        # NaN and inf survive a sum, and a float32 sum of finite estimates stays finite:
        # one reduction per estimate instead of a full-size isfinite mask.
        total = sum(e.sum(dtype=torch.float32) for e in estimates if e is not None)
        bad = ~torch.isfinite(total)
        if self.first_nonfinite is None:
            self.first_nonfinite = torch.full((), -1, dtype=torch.long, device=bad.device)
        here = torch.full((), index, dtype=torch.long, device=bad.device)
        self.first_nonfinite = torch.where(bad & (self.first_nonfinite < 0), here, self.first_nonfinite)

    def check_finite(self) -> None:
        """Raise NonFiniteEstimate if any evaluation of the run returned NaN or inf."""
        if self.first_nonfinite is not None and int(self.first_nonfinite) >= 0:
            raise NonFiniteEstimate(int(self.first_nonfinite), self.total_steps)

    def finish(self) -> GuidanceRecord:
        self.check_finite()
        return self.record.finish(self.policy_run.decisions())
