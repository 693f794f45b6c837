"""Adaptive projected guidance (Sadat et al., ICLR 2025, Algorithm 1), on denoised estimates."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from ..samplers.sigma_space import per_sample
from .policy import GuidancePolicy, Guided, PolicyRun, StepContext

# (eta, norm_threshold r, momentum beta) seen in practice; see algorithms.md.
PRESETS = {
    "SD1.5": (0.0, 6.5, -0.5),
    "SD1.5 + CFG++": (0.0, 2.5, -0.45),
    "SD2.1": (0.0, 7.5, -0.75),
    "SDXL": (0.0, 15.0, -0.5),
}


def _per_sample_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return per_sample((a * b).flatten(1).sum(dim=1), a)


def project(g: torch.Tensor, onto: torch.Tensor) -> "tuple[torch.Tensor, torch.Tensor]":
    """Eq. 5: g = g_par + g_perp with g_par along ``onto``, per sample, in float64."""
    g64, v64 = g.double(), onto.double()
    g_par = _per_sample_dot(g64, v64) / _per_sample_dot(v64, v64).clamp_min(1e-30) * v64
    return g_par.to(g.dtype), (g64 - g_par).to(g.dtype)


def rescale(g: torch.Tensor, norm_threshold: float) -> torch.Tensor:
    """Eq. 9: g * min(1, r / ||g||) per sample; r = 0 disables it."""
    if norm_threshold <= 0:
        return g
    norm = per_sample(g.flatten(1).norm(dim=1), g)
    return g * torch.clamp(norm_threshold / norm.clamp_min(1e-30), max=1.0)


def apg(cond: torch.Tensor, update: torch.Tensor, scale: float, eta: float) -> torch.Tensor:
    """Eq. 7: D = D_c + (w - 1) (g_perp + eta g_par), with g already momentum- and norm-adjusted."""
    g_par, g_perp = project(update, cond)
    return cond + (scale - 1) * (g_perp + eta * g_par)


class APGRun(PolicyRun):
    def __init__(self, policy: "APGPolicy"):
        self.policy = policy
        self.momentum: Optional[torch.Tensor] = None  # starts at 0 for every run (Alg. 1)

    def guide(self, cond, uncond, step: StepContext) -> Guided:
        p = self.policy
        if uncond is None:  # only at w == 1 with no sampler asking for uncond
            return Guided(cond, None)
        g = cond - uncond
        if p.momentum != 0:
            self.momentum = g if self.momentum is None else g + p.momentum * self.momentum
            g = self.momentum
        g = rescale(g, p.norm_threshold)
        norm = g.flatten(1).norm(dim=1)
        return Guided(apg(cond, g, p.scale, p.eta), uncond, {"guidance_norm": norm})

    def needs_uncond(self, step: StepContext) -> bool:
        return step.uncond_requested or not math.isclose(self.policy.scale, 1.0)


@dataclass(frozen=True)
class APGPolicy(GuidancePolicy):
    scale: float = 7.5
    eta: float = 0.0
    norm_threshold: float = 6.5
    momentum: float = -0.5
    name = "apg"

    def __post_init__(self):
        for field, value in (("scale", self.scale), ("eta", self.eta),
                             ("norm_threshold", self.norm_threshold), ("momentum", self.momentum)):
            if not math.isfinite(value):
                raise ValueError(f"APG {field} must be a finite number, got {value!r}")
        if self.norm_threshold < 0:
            raise ValueError(f"APG norm_threshold must be >= 0 (0 disables it), got {self.norm_threshold}")

    @classmethod
    def from_preset(cls, preset: str, scale: float) -> "APGPolicy":
        eta, r, beta = PRESETS[preset]
        return cls(scale=scale, eta=eta, norm_threshold=r, momentum=beta)

    def start(self, total_steps: int) -> APGRun:
        return APGRun(self)

    def settings(self) -> dict:
        return {"scale": self.scale, "eta": self.eta, "norm_threshold": self.norm_threshold,
                "momentum": self.momentum}

    def is_stateless(self) -> bool:
        # Momentum carries the earlier steps' guidance into this one.
        return self.momentum == 0
