"""Classifier-free guidance, the reference policy (Ho & Salimans 2022)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .policy import GuidancePolicy, Guided, PolicyRun, StepContext


def cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """CFG on denoised estimates, D_u + w (D_c - D_u), in ComfyUI's operation order so
    that the result is bit-for-bit ComfyUI's ``cfg_function``."""
    return uncond + (cond - uncond) * scale


class CFGRun(PolicyRun):
    def __init__(self, scale: float):
        self.scale = scale
        # ComfyUI's cfg1 optimisation: at w == 1 the guided estimate is D_c, so the
        # unconditional pass is skipped unless a sampler asks for it (CFG++ does).
        self.skips_uncond = math.isclose(scale, 1.0)

    def needs_uncond(self, step: StepContext) -> bool:
        return step.uncond_requested or not self.skips_uncond

    def guide(self, cond: torch.Tensor, uncond: Optional[torch.Tensor], step: StepContext) -> Guided:
        if uncond is None:
            return Guided(cond, None)
        return Guided(cfg(cond, uncond, self.scale), uncond)


@dataclass(frozen=True)
class CFGPolicy(GuidancePolicy):
    scale: float = 7.5
    name = "cfg"
    is_plain_cfg = True

    def __post_init__(self):
        if not math.isfinite(self.scale):
            raise ValueError(f"CFG scale must be a finite number, got {self.scale!r}")

    def start(self, total_steps: int) -> CFGRun:
        return CFGRun(self.scale)

    def settings(self) -> dict:
        return {"scale": self.scale}

    def is_stateless(self) -> bool:
        return True
