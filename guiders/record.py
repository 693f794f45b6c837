"""Honest accounting of a guided sampling run: model evaluations and policy decisions.

NFE counts one model evaluation for one condition of one sample, so CFG costs 2 NFE
per image per step whether ComfyUI runs cond and uncond in one batch or two. The
numbers are counted where the model is actually called, not derived from the policy.
Tensors (sigmas, metrics) stay on the model's device during the run and are read to
the host once, in ``finish``, so the step loop never waits on the device.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional

import torch


@dataclass
class StepRecord:
    index: int
    nfe: int = 0
    calls: int = 0
    uncond_evaluations: int = 0
    sigma: Optional[float] = None
    metrics: dict = field(default_factory=dict)
    _pending: list = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        return {"step": self.index, "sigma": self.sigma, "nfe": self.nfe, "calls": self.calls,
                "uncond_evaluations": self.uncond_evaluations, "metrics": self.metrics}


class GuidanceRecord:
    """Per-step NFE and policy metrics of one run, plus the policy's decisions."""

    def __init__(self, policy: str, settings: dict, batch_size: int, total_steps: int):
        self.policy = policy
        self.settings = dict(settings)
        self.batch_size = batch_size
        self.total_steps = total_steps
        self.steps: list[StepRecord] = []
        self.decisions: dict = {}
        # Things the user should know about the run (shown in the report, not only logged).
        self.warnings: list[str] = []
        self.finished = False
        # The hallucination score (trajectory_variance.py): per-sample list, or None when the run
        # was not scored (no schedule) or its window held fewer than two estimates.
        self.hallucination: Optional[dict] = None
        self._pending_scores = None

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def step(self, index: int) -> StepRecord:
        while len(self.steps) <= index:
            self.steps.append(StepRecord(len(self.steps)))
        return self.steps[index]

    def add_nfe(self, index: int, evaluations: int) -> None:
        self.step(index).nfe += evaluations

    def note_call(self, index: int, sigma: torch.Tensor, uncond_evaluated: bool, metrics: dict) -> None:
        rec = self.step(index)
        # References only: reshaping and copying wait for finish(), off the step loop.
        if rec.calls == 0:
            rec._pending.append(("sigma", sigma))
        rec.calls += 1
        rec.uncond_evaluations += int(uncond_evaluated)
        if metrics:
            rec._pending.extend(metrics.items())

    def note_trajectory_variance(self, trajectory) -> None:
        """The run's TrajectoryVariance, read in ``finish``."""
        self.hallucination = {"metric": "trajectory_variance", "window_noise_level": trajectory.window,
                              "estimates": trajectory.count, "space": "latent", "score": None}
        self._pending_scores = trajectory.scores()
        if self._pending_scores is None:
            # Said in the score's own entry, not as a run warning: every short run would warn.
            self.hallucination["note"] = (f"the hallucination score needs at least two denoised estimates at "
                                          f"noise level <= {trajectory.window:g} and this run made "
                                          f"{trajectory.count}: use more steps")

    def finish(self, decisions: Optional[dict] = None) -> "GuidanceRecord":
        """Read the device-side values to the host, once, after the last step."""
        if decisions:
            self.decisions.update(decisions)
        if self._pending_scores is not None:
            self.hallucination["score"] = self._pending_scores.detach().float().cpu().tolist()
            self._pending_scores = None
        for rec in self.steps:
            for name, value in rec._pending:
                values = torch.as_tensor(value).detach().reshape(-1).float().cpu().tolist()
                if name == "sigma":
                    rec.sigma = values[0]
                else:
                    rec.metrics.setdefault(name, []).extend(values)
            rec._pending.clear()
        self.finished = True
        return self

    @property
    def total_nfe(self) -> int:
        return sum(s.nfe for s in self.steps)

    @property
    def nfe_per_image(self) -> float:
        return self.total_nfe / max(self.batch_size, 1)

    @property
    def nfe_per_step(self) -> list:
        """NFE per image at each step."""
        return [s.nfe / max(self.batch_size, 1) for s in self.steps]

    @property
    def uncond_steps(self) -> int:
        return sum(1 for s in self.steps if s.uncond_evaluations)

    def to_dict(self) -> dict:
        return {"policy": self.policy, "settings": self.settings, "batch_size": self.batch_size,
                "total_steps": self.total_steps, "total_nfe": self.total_nfe,
                "nfe_per_image": self.nfe_per_image, "nfe_per_step": self.nfe_per_step,
                "uncond_steps": self.uncond_steps, "decisions": self.decisions, "warnings": self.warnings,
                "hallucination": self.hallucination, "steps": [s.to_dict() for s in self.steps]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def summary(self) -> str:
        settings = ", ".join(f"{k}={v}" for k, v in self.settings.items())
        per_step = " ".join(f"{n:g}" for n in self.nfe_per_step)
        lines = [
            f"policy: {self.policy} ({settings})",
            f"batch {self.batch_size}, {len(self.steps)}/{self.total_steps} steps",
            f"NFE: {self.total_nfe} total, {self.nfe_per_image:g} per image",
            f"uncond evaluated at {self.uncond_steps} of {len(self.steps)} steps",
            f"NFE per image by step: {per_step}",
        ]
        if self.decisions:
            lines.append("decisions: " + json.dumps(self.decisions))
        scores = (self.hallucination or {}).get("score")
        if scores:
            lines.append("hallucination score (trajectory variance, noise level <= "
                         f"{self.hallucination['window_noise_level']:g}): "
                         + " ".join(f"{v:.3g}" for v in scores[:16]) + (" ..." if len(scores) > 16 else ""))
        lines.extend(f"WARNING: {w}" for w in self.warnings)
        return "\n".join(lines)
