"""LinearAG (Castillo et al., AAAI 2025, Sec. 5): replace unconditional evaluations by an
affine combination of quantities the run has already computed.

At step t the unconditional noise estimate is predicted as
    eps_u(t) ~= a_t0 eps_c(t) + a_t1 x_t / sqrt(1 + sigma_t^2) + a_t2 eps_c(k) + a_t3 eps_u(k) + a_t4,
where k < t is the last step whose uncond was really evaluated, with one scalar coefficient
per feature, step and lag t - k, shared by every pixel and sample. The history is always a
real evaluation, never an earlier prediction: a predictor fed its own predictions compounds
their errors (on the pack's flow model, predicting every other step kept adherence at
0.92 of CFG's 1.00, two steps in a row with lag-1 coefficients dropped it to 0.77), and the
calibration could only ever see real history. Calibration runs full CFG and, at every step,
accumulates the normal equations of the fit for every lag up to ``MAX_LAG`` (K x K and K
numbers per step and lag, never the trajectories); the guider, which knows which steps it
evaluates, solves the ridge-regularised least squares (closed form, (H^T H + lambda I)^-1
H^T y; at lambda = 0 the minimum-norm solution) for each step at the lag its schedule gives.

The paper finds the affine estimates in the first half of sampling and the redundancy of
guidance (AG) in the second; ``guided_steps`` pairs them with a fixed end: from that step on
a run is conditional-only (no evaluation, no estimate of uncond; D_c is the guided result
and what a CFG++ sampler re-noises with).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..samplers.sigma_space import denoised_from_noise, expand, noise_from_denoised
from .cfg import CFGRun, cfg
from .policy import GuidancePolicy, Guided, PolicyRun, SettingMismatch, StepContext

FEATURES = ("eps_c", "x_scaled", "eps_c_last_evaluated", "eps_u_last_evaluated", "bias")
RCOND = 1e-12  # relative singular-value cut-off of the fit (see NormalEquations.solve)
# The longest gap between two real unconditional evaluations a calibration can serve: the
# normal equations grow with steps x lags, and 64 covers any schedule of up to 65 steps.
MAX_LAG = 64


def features(x, sigma, eps_c, eps_c_hist, eps_u_hist) -> torch.Tensor:
    """The regressors of one step, as columns [N, K] over every pixel of every sample.

    Missing history (the first step) is zeros; the bias column is ones."""
    s = expand(sigma, x)
    x_scaled = x / torch.sqrt(1 + s**2)
    hist_c = torch.zeros_like(eps_c) if eps_c_hist is None else eps_c_hist
    hist_u = torch.zeros_like(eps_c) if eps_u_hist is None else eps_u_hist
    cols = [eps_c, x_scaled, hist_c, hist_u, torch.ones_like(eps_c)]
    return torch.stack([c.reshape(-1).double() for c in cols], dim=1)


def history_lags(total_steps: int, evaluate_at) -> list:
    """For each step, how far back the last real evaluation before it is (1 at step 0 and at
    evaluated steps, whose coefficients go unused; step 0 has no history at all)."""
    lags, last = [], None
    for t in range(total_steps):
        lags.append(1 if last is None or t in evaluate_at else t - last)
        if t in evaluate_at:
            last = t
    return lags


class NormalEquations:
    """Running sums H^T H, H^T y and y^T y per step and history lag, for the closed-form ridge fit."""

    def __init__(self, steps: int, k: int = len(FEATURES), max_lag: int = MAX_LAG):
        self.steps, self.k = steps, k
        self.lags = max(1, min(max_lag, steps - 1))
        self.hth = self.hty = self.yty = self.count = None

    def add(self, step: int, h: torch.Tensor, y: torch.Tensor, lag: int = 1) -> None:
        if self.hth is None:  # the sums live on the model's device until solve()
            opts = {"dtype": torch.float64, "device": h.device}
            self.hth = torch.zeros(self.steps, self.lags, self.k, self.k, **opts)
            self.hty = torch.zeros(self.steps, self.lags, self.k, **opts)
            self.yty = torch.zeros(self.steps, self.lags, **opts)
            self.count = torch.zeros(self.steps, self.lags, **opts)
        h, y = h.double(), y.reshape(-1).double()
        self.hth[step, lag - 1] += h.T @ h
        self.hty[step, lag - 1] += h.T @ y
        self.yty[step, lag - 1] += y @ y
        self.count[step, lag - 1] += y.numel()

    def solve(self, ridge: float, lags: "list | None" = None) -> "tuple[torch.Tensor, torch.Tensor]":
        """Coefficients [steps, K] and the relative RMS residual per step, on the CPU, each
        step fitted at ``lags[step]`` (1 everywhere by default: every step evaluated before)."""
        if not (math.isfinite(ridge) and ridge >= 0):
            raise ValueError(f"ridge must be a finite number >= 0, got {ridge!r}")
        if self.hth is None:
            raise ValueError("no calibration data: the calibration runs recorded no step")
        lags = [1] * self.steps if lags is None else list(lags)
        if len(lags) != self.steps:
            raise ValueError(f"{len(lags)} lags for {self.steps} steps")
        too_far = [t for t, lag in enumerate(lags) if not 1 <= lag <= self.lags]
        if too_far:
            raise ValueError(f"steps {too_far} would be predicted more than {self.lags} steps after the last "
                             f"evaluated one, the longest gap the calibration recorded; evaluate uncond more often")
        rows, cols = torch.arange(self.steps), torch.tensor(lags) - 1
        hth, hty, yty, count = (t.cpu()[rows, cols] for t in (self.hth, self.hty, self.yty, self.count))
        if bool((count == 0).any()):
            missing = (count == 0).nonzero().reshape(-1).tolist()
            raise ValueError(f"no calibration data for steps {missing}")
        k = self.k
        scale = hth.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(1e-12)
        eye = torch.eye(k, dtype=torch.float64)
        # Least squares through the pseudo-inverse (SVD), not a plain solve: at ridge = 0 the
        # normal equations are singular wherever features are collinear (at step 0 the history
        # columns are all zero), and there the minimum-norm solution is the meaningful one.
        # Directions below RCOND of the largest singular value are dropped; any ridge above
        # ~1e-11 keeps every direction, so those fits equal the closed-form ridge solution.
        system = hth + ridge * scale[:, None, None] * eye
        coef = torch.linalg.lstsq(system, hty[..., None], rcond=RCOND, driver="gelsd").solution[..., 0]
        # ||y - H a||^2 = y'y - 2 a'H'y + a'H'H a
        sse = yty - 2 * (coef * hty).sum(-1) + (coef[:, None, :] @ hth @ coef[..., None])[:, 0, 0]
        rel = torch.sqrt(sse.clamp_min(0) / yty.clamp_min(1e-30))
        return coef, rel

    def tensors(self) -> dict:
        """The sums, for a calibration file."""
        return {"hth": self.hth.cpu(), "hty": self.hty.cpu(), "yty": self.yty.cpu(), "count": self.count.cpu()}

    @classmethod
    def from_tensors(cls, tensors: dict) -> "NormalEquations":
        hth = tensors["hth"]
        if hth.ndim != 4 or min(hth.shape) < 1:
            raise ValueError(f"hth of shape {tuple(hth.shape)} is not (steps, lags, K, K)")
        eq = cls(hth.shape[0], hth.shape[-1])
        eq.lags = hth.shape[1]
        eq.hth, eq.hty, eq.yty, eq.count = (tensors[n].double() for n in ("hth", "hty", "yty", "count"))
        return eq


def evaluated_steps(total_steps: int, warmup: int, every: int, guided_steps: "Optional[int]" = None) -> list:
    """Steps where uncond is really evaluated: the first ``warmup`` and every ``every``-th,
    before ``guided_steps`` (after it a run is conditional-only)."""
    end = total_steps if guided_steps is None else min(total_steps, guided_steps)
    return [i for i in range(end) if i < warmup or (every > 0 and i % every == 0)]


def guided_step_count(total_steps: int, guidance_end: float) -> "Optional[int]":
    """How many leading steps a ``guidance_end`` fraction guides (None: every step)."""
    if not (math.isfinite(guidance_end) and 0.0 < guidance_end <= 1.0):
        raise ValueError(f"guidance_end must be in (0, 1], got {guidance_end!r}")
    return None if guidance_end >= 1.0 else max(1, round(guidance_end * total_steps))


class CalibrationRun(CFGRun):
    """Full CFG that feeds each step's features, with the history of every earlier step up to
    ``MAX_LAG`` back, and the true eps_u into ``equations``."""

    def __init__(self, scale: float, equations: NormalEquations):
        super().__init__(scale)
        self.skips_uncond = False
        self.equations = equations
        # step -> (eps_c, eps_u) of its last evaluation (a two-evaluation sampler's corrector
        # overwrites its predictor, as the guider's history does in use)
        self.history: dict = {}

    def guide(self, cond, uncond, step: StepContext) -> Guided:
        eps_c = noise_from_denoised(step.x, cond, step.sigma, step.family)
        eps_u = noise_from_denoised(step.x, uncond, step.sigma, step.family)
        t, eq = step.index, self.equations
        if t < eq.steps:
            h = features(step.x, step.sigma, eps_c, None, None)  # history columns zero: step 0's
            if t == 0:
                eq.add(0, h, eps_u)
            for lag in range(1, min(t, eq.lags) + 1):
                hist_c, hist_u = self.history[t - lag]
                h[:, 2], h[:, 3] = hist_c.reshape(-1), hist_u.reshape(-1)  # the step's own columns stay
                eq.add(t, h, eps_u, lag)
        self.history[t] = (eps_c, eps_u)
        self.history.pop(t - eq.lags - 1, None)
        return super().guide(cond, uncond, step)


@dataclass(frozen=True)
class CalibrationPolicy(GuidancePolicy):
    scale: float
    equations: NormalEquations = field(compare=False)
    name = "linear-ag-calibration"

    def start(self, total_steps: int) -> CalibrationRun:
        return CalibrationRun(self.scale, self.equations)

    def settings(self) -> dict:
        return {"scale": self.scale}


class LinearAGRun(PolicyRun):
    def __init__(self, policy: "LinearAGPolicy"):
        self.policy = policy
        # (eps_c, eps_u) of the last step whose uncond was really evaluated
        self.history: "tuple[Optional[torch.Tensor], Optional[torch.Tensor]]" = (None, None)
        self.estimated = 0
        self.coefficients: Optional[torch.Tensor] = None  # the policy's, on the model's device

    def unguided(self, step: StepContext) -> bool:
        return self.policy.guided_steps is not None and step.index >= self.policy.guided_steps

    def needs_uncond(self, step: StepContext) -> bool:
        if self.unguided(step):
            return False
        return step.index in self.policy.evaluate_at or step.index >= len(self.policy.coefficients)

    def guide(self, cond, uncond, step: StepContext) -> Guided:
        if self.unguided(step):
            return Guided(cond, None, {"cond_only": torch.ones(cond.shape[0], device=cond.device)})
        eps_c = noise_from_denoised(step.x, cond, step.sigma, step.family)
        metrics = {}
        if uncond is None:
            if self.coefficients is None:  # one copy per run, not one per predicted step
                self.coefficients = self.policy.coefficients.to(device=cond.device, dtype=torch.float64)
            h = features(step.x, step.sigma, eps_c, *self.history)
            eps_u = (h @ self.coefficients[step.index]).reshape(cond.shape).to(cond.dtype)
            uncond = denoised_from_noise(step.x, eps_u, step.sigma, step.family)
            self.estimated += 1
            metrics["uncond_estimated"] = torch.ones(cond.shape[0], device=cond.device)
        else:
            self.history = (eps_c, noise_from_denoised(step.x, uncond, step.sigma, step.family))
        return Guided(cfg(cond, uncond, self.policy.scale), uncond, metrics)

    def decisions(self) -> dict:
        return {"uncond_estimated_evaluations": self.estimated,
                "evaluated_steps": sorted(self.policy.evaluate_at), "guided_steps": self.policy.guided_steps}


@dataclass(frozen=True)
class LinearAGPolicy(GuidancePolicy):
    scale: float
    coefficients: torch.Tensor = field(compare=False)  # [steps, K], each step's at its schedule's lag
    evaluate_at: frozenset = frozenset({0})
    # fits(sampler, sigmas, sampler_options) -> why it does not fit (a message naming the node and
    # input the coefficients came from), or None (the calibration's own check)
    fits: Optional[object] = field(default=None, compare=False)
    guided_steps: Optional[int] = None  # steps from this index on are conditional-only; None: guide all
    name = "linear-ag"

    def check_run(self, sampler: str, sigmas: list, sampler_options: Optional[dict] = None) -> None:
        reason = self.fits(sampler, sigmas, sampler_options or {}) if self.fits is not None else None
        if reason:
            raise SettingMismatch(reason)

    def __post_init__(self):
        if not math.isfinite(self.scale):
            raise ValueError(f"LinearAG scale must be finite, got {self.scale!r}")
        if 0 not in self.evaluate_at:
            raise ValueError("LinearAG must evaluate uncond at step 0 (there is no history to predict from)")
        if self.guided_steps is not None and self.guided_steps < 1:
            raise ValueError(f"LinearAG must guide at least step 0, got guided_steps={self.guided_steps!r}")

    def start(self, total_steps: int) -> LinearAGRun:
        return LinearAGRun(self)

    def settings(self) -> dict:
        settings = {"scale": self.scale, "evaluated_steps": len(self.evaluate_at),
                    "steps": int(self.coefficients.shape[0])}
        if self.guided_steps is not None:
            settings["guided_steps"] = self.guided_steps
        return settings


__all__ = ["FEATURES", "MAX_LAG", "features", "history_lags", "NormalEquations", "evaluated_steps",
           "guided_step_count", "CalibrationPolicy", "LinearAGPolicy"]
