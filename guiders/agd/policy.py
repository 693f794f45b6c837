"""AGD at sampling time: one model evaluation per step, the conditional branch only.

The adapters (fed the scale w through the run's options by the host bridge) make the
conditional estimate imitate CFG at scale w, so the policy never asks for the
unconditional branch: a single forward pass replaces CFG's two [paper: sampling].

Decisions:

- a scale outside the trained range is refused (``check_scale``): the adapters never
  saw it, and a silent clamp would sample at another scale than the one asked for;
- there is no negative prompt: AGD distils CFG against the empty prompt [paper: training], so
  a custom negative is not part of what the adapters learnt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from ..policy import GuidancePolicy, Guided, PolicyRun, StepContext

# Where the adapters find the run's values in ComfyUI's transformer_options.
RUN_KEY = "guidance_lab_agd"


def check_scale(scale: float, scale_range: "tuple[float, float]") -> float:
    """[paper: sampling]: w must lie in the range U[lo, hi] the adapters were trained on."""
    lo, hi = float(scale_range[0]), float(scale_range[1])
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale):
        raise ValueError(f"the guidance scale must be a finite number, got {scale!r}")
    if not lo <= scale <= hi:
        raise ValueError(f"scale {scale:g} is outside the range the adapter was trained on, "
                         f"[{lo:g}, {hi:g}]; "
                         "choose a scale in that range (or train an adapter for a wider one)")
    return float(scale)


class AGDRun(PolicyRun):
    def needs_uncond(self, step: StepContext) -> bool:
        return False  # one forward pass, even where a CFG++ sampler asks for D_u

    def guide(self, cond: torch.Tensor, uncond: Optional[torch.Tensor], step: StepContext) -> Guided:
        return Guided(cond, None)


@dataclass(frozen=True)
class AGDPolicy(GuidancePolicy):
    """The guided estimate is the adapted model's conditional estimate at scale w."""

    scale: float = 5.0
    scale_range: "tuple[float, float]" = (1.0, 12.0)
    name = "agd"
    uses_uncond = False

    def __post_init__(self):
        check_scale(self.scale, self.scale_range)

    def start(self, total_steps: int) -> AGDRun:
        return AGDRun()

    def settings(self) -> dict:
        return {"scale": self.scale, "scale_range": list(self.scale_range)}

    def transformer_options(self) -> dict:
        """[paper: adapter]: the scale the adapters read in this run (never stored on the model)."""
        return {RUN_KEY: {"scale": self.scale}}

    def is_stateless(self) -> bool:
        return True


__all__ = ["AGDPolicy", "AGDRun", "RUN_KEY", "check_scale"]
