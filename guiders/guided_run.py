"""One sampling run of a guidance policy: step keying, policy state and the record.

The host side (the ComfyUI GUIDER) supplies ``evaluate(need_uncond)``, which calls the
model and returns ``(D_c, D_u or None)``; everything else about a guided evaluation
lives here, so it is testable with any torch denoiser.

Step keying. Every evaluation belongs to the schedule step whose transition s_i -> s_{i+1}
it serves: an evaluation at sigma in (s_{i+1}, s_i] is step i, and so is Heun's corrector
at exactly s_{i+1}. Sigma alone cannot tell that corrector from step i+1's first
evaluation (same value, bit for bit), nor the eta = 1 midpoint of the ancestral DPM
samplers (s_{i+1} up to rounding), heunpp2's look-ahead at s_{i+2} or a churned
sigma_hat > s_i. What does tell them apart is the sampler's evaluation pattern: the
*plan*, the number of evaluations of each step, computed on the host from the sampler's
identity, options and schedule before the run. The k-th evaluation of the run then
belongs to the step whose cumulative count first exceeds k: exact, live (the policy sees
the same index in calibration and in use) and without reading anything back from the
device. Each sampler callback checks the plan (its step's first evaluation must be done
and the next step's not begun); a plan that proves wrong, or a sampler without one,
falls back to keying on the callbacks, which is exact for one evaluation per step, and
the record says so where a step evaluated more than once.
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate
from typing import Callable, Optional, Sequence

import torch

from .policy import GuidancePolicy, Guided, StepContext
from .record import GuidanceRecord
from .trajectory_variance import DEFAULT_WINDOW, TrajectoryVariance

Evaluate = Callable[[bool], "tuple[torch.Tensor, Optional[torch.Tensor]]"]


class NonFiniteEstimate(ValueError):
    """The model returned NaN or inf; ``step`` is the first sampler step where it did."""

    def __init__(self, step: int, total_steps: int):
        super().__init__(f"the model's prediction contains NaN or inf at step {step} of {total_steps}; "
                         f"sampling stopped instead of returning a broken image (check the model's "
                         f"dtype, the latent, and the guidance settings)")
        self.step = step


class GuidedRun:
    def __init__(self, policy: GuidancePolicy, total_steps: int, batch_size: int, family: str = "eps",
                 plan: Optional[Sequence[int]] = None, schedule: Optional[Sequence[float]] = None,
                 variance_window: float = DEFAULT_WINDOW):
        self.policy = policy
        self.family = family
        # NaN watch: one float32 sum of each guided estimate (NaN and inf survive a sum, a
        # finite one stays finite), kept on the device with its step and read in finish(),
        # so watching costs one reduction per evaluation and no host sync in the loop.
        self._sums: list = []
        self._sum_steps: list = []
        self.total_steps = total_steps
        self.policy_run = policy.start(total_steps)
        self.record = GuidanceRecord(policy.name, policy.settings(), batch_size, total_steps)
        # The hallucination score (trajectory_variance.py) from the guided estimates the sampler
        # receives anyway: no extra evaluation. Needs the host-side schedule to place its window.
        self.trajectory = (TrajectoryVariance(schedule, family, variance_window)
                           if schedule is not None and len(schedule) == total_steps + 1 else None)
        self.step_index = 0
        self.evaluations = 0  # guided evaluations so far (one per guider call, whole batch)
        self._since_callback = 0
        # Cumulative evaluations at the end of each step (see the module docstring); None:
        # keyed on the callbacks.
        self._ends = list(accumulate(plan)) if plan is not None and len(plan) == total_steps else None

    def _begin_evaluation(self) -> int:
        """The schedule step of the evaluation that starts now, and count it."""
        if self._ends is not None:
            self.step_index = min(bisect_right(self._ends, self.evaluations), max(self.total_steps - 1, 0))
        self.evaluations += 1
        self._since_callback += 1
        return self.step_index

    def step_done(self, index: int) -> None:
        """The sampler's per-step callback for step ``index``: checks the plan, or (without
        one) moves later evaluations to step ``index + 1``."""
        ends, done, since, self._since_callback = self._ends, self.evaluations, self._since_callback, 0
        if ends is not None:
            # The callback comes after its step's first evaluation (k-diffusion) or after its
            # last (the pack's loop): either way within the step's share of the plan.
            if index < len(ends) and (ends[index - 1] if index else 0) < done <= ends[index]:
                return
            self._ends = None
            self.record.warn(f"the sampler did not evaluate the model as planned for its step {index} "
                             f"({done} evaluations by then): from there on per-step figures follow its "
                             f"callbacks and may book part of a step on the next one")
        elif since > 1:
            self.record.warn("the sampler evaluated the model more than once in a step and its evaluation "
                             "pattern is not known to Guidance Lab: per-step figures follow its callbacks "
                             "and may book part of a step on the next one")
        self.step_index = index + 1

    def count_evaluations(self, evaluations: int) -> None:
        self.record.add_nfe(self.step_index, evaluations)

    def plan(self, x: torch.Tensor, sigma: torch.Tensor,
             uncond_requested: bool = False) -> "tuple[StepContext, bool]":
        """First half of a guided evaluation: count it, key it on its step and ask the policy
        whether the unconditional estimate is needed. A host that cannot pass a callable to
        the model call (ComfyUI's cond-batch hook, nodes/bridge/model_patch.py) calls this,
        evaluates, then ``combine``; ``denoise`` does all three."""
        index = self._begin_evaluation()
        step = StepContext(index, self.total_steps, x, sigma, uncond_requested, self.family)
        return step, self.policy_run.needs_uncond(step)

    def combine(self, step: StepContext, need_uncond: bool, cond: torch.Tensor,
                uncond: Optional[torch.Tensor]) -> Guided:
        """Second half: the policy's answer for the estimates of the evaluation ``plan`` keyed."""
        guided = self.policy_run.guide(cond, uncond if need_uncond else None, step)
        # The guided estimate is what the sampler receives: a NaN or inf in D_c or in a D_u
        # it used shows there (CFG at any scale, AG, LinearAG's prediction, APG's projection).
        self._sums.append(guided.denoised.sum(dtype=torch.float32))
        self._sum_steps.append(step.index)
        if self.trajectory is not None:
            self.trajectory.note(step.index, guided.denoised)
        self.record.note_call(step.index, step.sigma, need_uncond, guided.metrics)
        return guided

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, evaluate: Evaluate,
                uncond_requested: bool = False) -> "tuple[torch.Tensor, Guided]":
        """One guided evaluation; returns the conditional estimate and the policy's answer."""
        step, need_uncond = self.plan(x, sigma, uncond_requested)
        cond, uncond = evaluate(need_uncond)
        return cond, self.combine(step, need_uncond, cond, uncond)

    def check_finite(self) -> None:
        """Raise NonFiniteEstimate if any guided estimate of the run held NaN or inf."""
        if self._sums:
            bad = (~torch.isfinite(torch.stack(self._sums))).nonzero()  # the one read-back
            if bad.numel():
                raise NonFiniteEstimate(self._sum_steps[int(bad[0, 0])], self.total_steps)

    def finish(self) -> GuidanceRecord:
        self.check_finite()
        if self.trajectory is not None:
            self.record.note_trajectory_variance(self.trajectory)
        return self.record.finish(self.policy_run.decisions())
