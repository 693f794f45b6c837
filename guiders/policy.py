"""The guidance-policy interface every method of the pack plugs into.

A *policy* holds a method's settings and is immutable; it is shared by every run that
uses it. Each sampling run calls ``policy.start(total_steps)`` once and gets a fresh
*policy run* that holds the per-run state (APG momentum, AG's switch, LinearAG's
history). Two queued prompts that share a cached policy therefore never share state.

Per model evaluation the guider asks the run two things, in this order:

1. ``needs_uncond(step)``: is the unconditional estimate needed now? When it answers
   ``False`` the guider calls the model with the conditional batch only.
2. ``guide(cond, uncond, step)``: the guided denoised estimate, given the conditional
   estimate ``D_c`` and the unconditional ``D_u`` (``None`` when it was not evaluated).
   It also returns, per sample, the unconditional estimate CFG++-style samplers re-noise
   with: the D_u that sample's guidance used (evaluated or predicted), or D_c for a sample
   that is conditional-only (Adaptive Guidance after its switch); ``None`` when the whole
   batch is conditional-only, where ``Guided.renoise_uncond`` hands on D_c. It must be a
   per-sample quantity, so that a sample's result never depends on the rest of its batch.

Everything is in ComfyUI's sigma-space convention: the model returns denoised (x0)
estimates, and ``x`` / ``sigma`` are the sampler's state and noise level.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch


class SettingMismatch(ValueError):
    """A policy's settings (a LinearAG calibration) do not fit the run; the message already
    names the node and input they came from, so hosts pass it on unprefixed."""


@dataclass(frozen=True)
class StepContext:
    """Where in the run an evaluation happens; ``index`` is the schedule step it belongs to
    (from 0; a multi-evaluation step's every evaluation has its index, guided_run.py)."""

    index: int
    total_steps: int
    x: torch.Tensor
    sigma: torch.Tensor
    # The sampler asked for the unconditional estimate (CFG++ re-noises with it); a
    # policy may still decline, e.g. after Adaptive Guidance switched to cond-only.
    uncond_requested: bool = False
    # "eps" (x = x0 + sigma eps; eps and v-prediction models) or "flow" (CONST models).
    family: str = "eps"


@dataclass
class Guided:
    """A policy's answer for one evaluation."""

    denoised: torch.Tensor
    uncond: Optional[torch.Tensor]
    # Scalar or per-sample tensors worth plotting (cosine similarity, guidance norm ...);
    # they stay on the model's device and are read once, when the run ends.
    metrics: dict = field(default_factory=dict)

    def renoise_uncond(self, cond: torch.Tensor) -> torch.Tensor:
        """The D_u a CFG++ sampler re-noises with (CFG++ Alg. 1): the policy's, or D_c where
        the batch is conditional-only, so CFG++ then is the plain conditional sampler (never
        a zero placeholder, which would re-noise with x / sigma)."""
        return cond if self.uncond is None else self.uncond


class PolicyRun:
    """Per-run state of a policy. Subclasses override ``guide`` and, to skip the
    unconditional evaluation, ``needs_uncond``."""

    def needs_uncond(self, step: StepContext) -> bool:
        return True

    def guide(self, cond: torch.Tensor, uncond: Optional[torch.Tensor], step: StepContext) -> Guided:
        raise NotImplementedError

    def decisions(self) -> dict:
        """What the policy decided during the run (switch steps, ...), JSON-friendly."""
        return {}


class GuidancePolicy:
    """Settings of one guidance method. ``start`` returns the per-run state object."""

    name = "policy"
    # True where the guided estimate is plain CFG, D_u + w (D_c - D_u): then a host's own
    # CFG function (a model patched with RescaleCFG and the like) may replace that formula
    # exactly as the host would. Other policies decide the guided estimate themselves.
    is_plain_cfg = False

    def start(self, total_steps: int) -> PolicyRun:
        raise NotImplementedError

    def settings(self) -> dict:
        """The settings as a JSON-friendly dict, for reports and file metadata."""
        return {}

    # Whether the policy ever uses the unconditional estimate (AGD never does: its guidance is
    # in the adapters), so wrappers that act on that estimate (Adaptive Guidance) can refuse it.
    uses_uncond = True

    def transformer_options(self) -> dict:
        """Per-run values the policy's model patches read from the run's transformer_options
        (AGD's scale); the guider puts them in its per-run options clone. Most policies: none."""
        return {}

    def check_run(self, sampler: str, sigmas: list, sampler_options: Optional[dict] = None) -> None:
        """Raise ValueError if the policy cannot serve a run with this sampler (function name and
        options: eta, s_noise, ...) and schedule (``SettingMismatch`` where the message names
        the node and input the settings came from)."""

    def is_stateless(self) -> bool:
        """True where each guided estimate depends only on that evaluation's D_c, D_u, x and
        sigma (no momentum, switch, history or step index): only then does a run retraced
        backwards (EDICT's inversion) meet the same function as the run forwards."""
        return False
