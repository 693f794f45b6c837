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


class GuidedRun:
    def __init__(self, policy: GuidancePolicy, total_steps: int, batch_size: int, family: str = "eps"):
        self.policy = policy
        self.family = family
        self.total_steps = total_steps
        self.state = policy.start(total_steps)
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
        need_uncond = self.state.needs_uncond(step)
        cond, uncond = evaluate(need_uncond)
        guided = self.state.guide(cond, uncond if need_uncond else None, step)
        self.record.note_call(step.index, sigma, need_uncond, guided.metrics)
        return cond, guided

    def finish(self) -> GuidanceRecord:
        return self.record.finish(self.state.decisions())
