"""BDIA and O-BELM inversion through ComfyUI's sampling (samplers/bidirectional.py).

As for EDICT (bridge/inversion.py): the pack's guider runs the model, a KSAMPLER runs the
core's loop, and the inverted pair, which does not fit ComfyUI's one-tensor sampler result,
comes back through a dict.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import comfy.model_management
import comfy.samplers
import torch

from ...samplers.bidirectional import Bidirectional, sample_bidirectional, sample_bidirectional_inversion
from .inversion import _run, model_mismatch, schedule_mismatch, to_latent_space
from .compat import ksampler
from .policy_guider import PolicyGuider
from .samplers import on_host


@dataclass(frozen=True)
class BidirectionalPair:
    """The BIDIRECTIONAL_PAIR type: the states at the schedule's first two sigmas (``upper``
    at sigmas[0], ``lower`` at sigmas[1]) in the model's own latent space, and what they were
    made with."""

    upper: torch.Tensor
    lower: torch.Tensor
    sigmas: tuple  # the descending schedule it was inverted along, as floats
    schedule: torch.Tensor  # the same, as the tensor the model saw
    rule: Bidirectional
    model_fingerprint: str
    shape: tuple
    family: str  # "eps" (eps and v-prediction) or "flow"
    guidance: str  # the guidance policy and its settings, for information
    # The states' low words (samplers/bidirectional.py, "Compensated states"): upper + upper_low
    # is the state the way up ended at; None reads as zero.
    upper_low: Optional[torch.Tensor] = None
    lower_low: Optional[torch.Tensor] = None

    def part(self, start: int, stop: int) -> "BidirectionalPair":
        def rows(t):
            return None if t is None else t[start:stop]

        return dataclasses.replace(self, upper=self.upper[start:stop], lower=self.lower[start:stop],
                                   upper_low=rows(self.upper_low), lower_low=rows(self.lower_low),
                                   shape=(stop - start,) + tuple(self.shape[1:]))

    def mismatch(self, sigmas: list, rule: Bidirectional, fingerprint: str, channels: int) -> Optional[str]:
        """Why this pair cannot be sampled back with these settings, or None."""
        problem = model_mismatch((self.upper, self.lower), self.shape, self.model_fingerprint, fingerprint,
                                 channels)
        if problem:
            return problem
        if rule.name != self.rule.name:
            return (f"was inverted with {self.rule.settings()}, input 'method' is {rule.name}; "
                    f"use the same method on both nodes")
        if rule != self.rule:
            return (f"was inverted with {self.rule.settings()}, input 'gamma' gives {rule.settings()}; "
                    f"use the same gamma on both nodes")
        return schedule_mismatch(self.sigmas, sigmas)


def _options(rule: Bidirectional) -> dict:
    return {"method": rule.name, "gamma": rule.gamma, "family": rule.family}


def network_dtype(model_patcher) -> torch.dtype:
    """The dtype the network computes in: fp8 weights are cast up to the model's manual-cast
    dtype before every layer, and the network's input with them."""
    return getattr(model_patcher.model, "manual_cast_dtype", None) or model_patcher.model_dtype()


def bidirectional_invert(guider: PolicyGuider, latent: torch.Tensor, sigmas: torch.Tensor, rule: Bidirectional,
                         state_dtype: torch.dtype) -> "tuple[torch.Tensor, ...]":
    """(upper, lower, upper_low, lower_low) at (sigmas[0], sigmas[1]) from the latent at
    sigmas[-1], on the intermediate device."""
    result: dict = {}
    sampler = comfy.samplers.KSAMPLER(sample_bidirectional_inversion,
                                      extra_options={**_options(rule), "state_dtype": state_dtype,
                                                     "network_dtype": network_dtype(guider.model_patcher),
                                                     "result": result})
    # Ascending with the final 0 kept: ComfyUI then starts from the latent itself.
    _run(guider, sampler, latent, sigmas.flip(0))
    device = comfy.model_management.intermediate_device()
    return tuple(t.to(device) for t in result["pair"] + result["pair_low"])


def bidirectional_sample(guider: PolicyGuider, pair: BidirectionalPair):
    """The pair sampled down steps 1 .. n-1 of its schedule: the final state as a LATENT's
    samples (float32), and the final (z_{n-1}, z_n) in the model's latent space and the
    state's dtype."""
    result: dict = {}
    sampler = comfy.samplers.KSAMPLER(sample_bidirectional, extra_options={
        **_options(pair.rule), "above": pair.upper, "above_sigma": pair.sigmas[0], "start": pair.lower,
        "above_low": pair.upper_low, "start_low": pair.lower_low, "state_dtype": pair.upper.dtype,
        "result": result})
    # An all-zero start: ComfyUI leaves it unshifted and noise-scales it to zero; the sampler
    # starts from the pair instead, one step below the schedule's top.
    _run(guider, sampler, torch.zeros(pair.shape), pair.schedule[1:])
    return to_latent_space(guider.model_patcher, result["pair"][1]), result["pair"]


def bidirectional_sampler(rule: Bidirectional, node: str) -> comfy.samplers.KSAMPLER:
    """A SAMPLER that samples from noise with the rule (first step DDIM), for SamplerCustomAdvanced;
    the model family O-BELM's weight depends on is read from the model it runs."""
    return ksampler(on_host(sample_bidirectional, rule.name, family_aware=True, node=node), _options(rule))
