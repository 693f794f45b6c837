"""LinearAG (Castillo et al., AAAI 2025, Sec. 5): replace unconditional evaluations by an
affine combination of quantities the run has already computed.

At step t the unconditional noise estimate is predicted as
    eps_u(t) ~= a_t0 eps_c(t) + a_t1 x_t / sqrt(1 + sigma_t^2) + a_t2 eps_c(t-1) + a_t3 eps_u(t-1) + a_t4,
with one scalar coefficient per feature and step, shared by every pixel and sample. The
coefficients are fitted per step by ridge-regularised least squares (closed form,
(H^T H + lambda I)^-1 H^T y; at lambda = 0 the minimum-norm least-squares solution) on
calibration runs with full CFG. Calibration only keeps the normal equations (K x K and K
numbers per step), never the trajectories.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..samplers.sigma_space import denoised_from_noise, expand, noise_from_denoised
from .cfg import CFGRun, cfg
from .policy import GuidancePolicy, Guided, PolicyRun, StepContext

FEATURES = ("eps_c", "x_scaled", "eps_c_prev", "eps_u_prev", "bias")
RCOND = 1e-12  # relative singular-value cut-off of the fit (see NormalEquations.solve)


def features(x, sigma, eps_c, eps_c_prev, eps_u_prev) -> torch.Tensor:
    """The regressors of one step, as columns [N, K] over every pixel of every sample.

    Missing history (the first step) is zeros; the bias column is ones."""
    s = expand(sigma, x)
    x_scaled = x / torch.sqrt(1 + s**2)
    prev_c = torch.zeros_like(eps_c) if eps_c_prev is None else eps_c_prev
    prev_u = torch.zeros_like(eps_c) if eps_u_prev is None else eps_u_prev
    cols = [eps_c, x_scaled, prev_c, prev_u, torch.ones_like(eps_c)]
    return torch.stack([c.reshape(-1).double() for c in cols], dim=1)


class NormalEquations:
    """Running sums H^T H and H^T y per step, for the closed-form ridge fit."""

    def __init__(self, steps: int, k: int = len(FEATURES)):
        self.steps, self.k = steps, k
        self.hth = self.hty = self.yty = self.count = None

    def add(self, step: int, h: torch.Tensor, y: torch.Tensor) -> None:
        if self.hth is None:  # the sums live on the model's device until solve()
            opts = {"dtype": torch.float64, "device": h.device}
            self.hth = torch.zeros(self.steps, self.k, self.k, **opts)
            self.hty = torch.zeros(self.steps, self.k, **opts)
            self.yty = torch.zeros(self.steps, **opts)
            self.count = torch.zeros(self.steps, **opts)
        h, y = h.double(), y.reshape(-1).double()
        self.hth[step] += h.T @ h
        self.hty[step] += h.T @ y
        self.yty[step] += y @ y
        self.count[step] += y.numel()

    def solve(self, ridge: float) -> "tuple[torch.Tensor, torch.Tensor]":
        """Coefficients [steps, K] and the relative RMS residual per step, on the CPU."""
        if not (math.isfinite(ridge) and ridge >= 0):
            raise ValueError(f"ridge must be a finite number >= 0, got {ridge!r}")
        if self.hth is None:
            raise ValueError("no calibration data: the calibration runs recorded no step")
        if bool((self.count == 0).any()):
            missing = (self.count == 0).nonzero().reshape(-1).tolist()
            raise ValueError(f"no calibration data for steps {missing}")
        self.hth, self.hty, self.yty, self.count = (t.cpu() for t in (self.hth, self.hty, self.yty, self.count))
        k = self.k
        scale = self.hth.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(1e-12)
        eye = torch.eye(k, dtype=torch.float64)
        # Least squares through the pseudo-inverse (SVD), not a plain solve: at ridge = 0 the
        # normal equations are singular wherever features are collinear (at step 0 the history
        # columns are all zero), and there the minimum-norm solution is the meaningful one.
        # Directions below RCOND of the largest singular value are dropped; any ridge above
        # ~1e-11 keeps every direction, so those fits equal the closed-form ridge solution.
        system = self.hth + ridge * scale[:, None, None] * eye
        coef = torch.linalg.lstsq(system, self.hty[..., None], rcond=RCOND, driver="gelsd").solution[..., 0]
        # ||y - H a||^2 = y'y - 2 a'H'y + a'H'H a
        sse = self.yty - 2 * (coef * self.hty).sum(-1) + (coef[:, None, :] @ self.hth @ coef[..., None])[:, 0, 0]
        rel = torch.sqrt(sse.clamp_min(0) / self.yty.clamp_min(1e-30))
        return coef, rel


def evaluated_steps(total_steps: int, warmup: int, every: int) -> list:
    """Steps where uncond is really evaluated: the first ``warmup`` and every ``every``-th."""
    return [i for i in range(total_steps) if i < warmup or (every > 0 and i % every == 0)]


class CalibrationRun(CFGRun):
    """Full CFG that feeds each step's features and true eps_u into ``equations``."""

    def __init__(self, scale: float, equations: NormalEquations):
        super().__init__(scale)
        self.skips_uncond = False
        self.equations = equations
        self.prev: "tuple[Optional[torch.Tensor], Optional[torch.Tensor]]" = (None, None)

    def guide(self, cond, uncond, step: StepContext) -> Guided:
        eps_c = noise_from_denoised(step.x, cond, step.sigma, step.family)
        eps_u = noise_from_denoised(step.x, uncond, step.sigma, step.family)
        if step.index < self.equations.steps:
            self.equations.add(step.index, features(step.x, step.sigma, eps_c, *self.prev), eps_u)
        self.prev = (eps_c, eps_u)
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
        self.prev: "tuple[Optional[torch.Tensor], Optional[torch.Tensor]]" = (None, None)
        self.estimated = 0

    def needs_uncond(self, step: StepContext) -> bool:
        return step.index in self.policy.evaluate_at or step.index >= len(self.policy.coefficients)

    def guide(self, cond, uncond, step: StepContext) -> Guided:
        eps_c = noise_from_denoised(step.x, cond, step.sigma, step.family)
        metrics = {}
        if uncond is None:
            coef = self.policy.coefficients[step.index].to(device=cond.device, dtype=torch.float64)
            h = features(step.x, step.sigma, eps_c, *self.prev)
            eps_u = (h @ coef).reshape(cond.shape).to(cond.dtype)
            uncond = denoised_from_noise(step.x, eps_u, step.sigma, step.family)
            self.estimated += 1
            metrics["uncond_estimated"] = torch.ones(cond.shape[0], device=cond.device)
        else:
            eps_u = noise_from_denoised(step.x, uncond, step.sigma, step.family)
        self.prev = (eps_c, eps_u)
        return Guided(cfg(cond, uncond, self.policy.scale), uncond, metrics)

    def decisions(self) -> dict:
        return {"uncond_estimated_evaluations": self.estimated,
                "evaluated_steps": sorted(self.policy.evaluate_at)}


@dataclass(frozen=True)
class LinearAGPolicy(GuidancePolicy):
    scale: float
    coefficients: torch.Tensor = field(compare=False)  # [steps, K]
    evaluate_at: frozenset = frozenset({0})
    # fits(sampler, sigmas, sampler_options) -> reason it does not fit, or None (the calibration's own check)
    fits: Optional[object] = field(default=None, compare=False)
    name = "linear-ag"

    def check_run(self, sampler: str, sigmas: list, sampler_options: Optional[dict] = None) -> None:
        reason = self.fits(sampler, sigmas, sampler_options or {}) if self.fits is not None else None
        if reason:
            raise ValueError(f"the LinearAG coefficients do not fit this run: {reason}; "
                             f"calibrate again with this sampler (and its options) and schedule")

    def __post_init__(self):
        if not math.isfinite(self.scale):
            raise ValueError(f"LinearAG scale must be finite, got {self.scale!r}")
        if 0 not in self.evaluate_at:
            raise ValueError("LinearAG must evaluate uncond at step 0 (there is no history to predict from)")

    def start(self, total_steps: int) -> LinearAGRun:
        return LinearAGRun(self)

    def settings(self) -> dict:
        return {"scale": self.scale, "evaluated_steps": len(self.evaluate_at),
                "steps": int(self.coefficients.shape[0])}


__all__ = ["FEATURES", "features", "NormalEquations", "evaluated_steps", "CalibrationPolicy",
           "LinearAGPolicy"]
