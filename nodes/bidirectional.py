"""Exact inversion at one model evaluation per step, BDIA (Zhang et al. 2023) and O-BELM (Wang
et al. 2024): a latent inverted into a pair of states, the pair sampled back with the same
prompt (the same latent, to rounding) or an edited one; and both as plain samplers."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..samplers.bidirectional import (EDIT_GAMMA, METHODS, SAMPLING_GAMMA, Bidirectional, check_schedule,
                                      inversion_gain, rule_for)
from .bridge.bidirectional import BidirectionalPair, bidirectional_invert, bidirectional_sample, bidirectional_sampler
from .bridge.fingerprint import model_fingerprint
from .bridge.inversion import to_latent_space
from .bridge.samplers import model_family
from .edict import PRECISIONS, checked_latent, checked_precision, edict_policy, guidance_input
from .guider_common import build_guider, cfg_input, model_and_prompt_inputs
from .validation import NodeInputError, checks_inputs

BIDIRECTIONAL_PAIR = io.Custom("BIDIRECTIONAL_PAIR")
# Refuse settings whose inversion gain would make rounding more than this share of the pair.
MAX_ROUNDING_SHARE = 1e-2


def method_input() -> io.Combo.Input:
    return io.Combo.Input("method", options=list(METHODS), default="o_belm",
                          tooltip="o_belm: O-BELM, the second-order rule (coefficients from the step sizes, "
                                  "no setting). bdia: BDIA-DDIM with the weight gamma below. Invert and "
                                  "Sample must use the same method.")


def gamma_input(default: float, invertible: bool) -> io.Float.Input:
    use = ("BDIA's gamma, the weight of the older state (in the model's own states, as the paper writes "
           "it): strictly above 0 (inversion divides by it) and at most 1; the authors edit with 0.92-1.0, "
           "0.8 edits best on the pack's v-prediction default model, 0.85 on its flow one. Small values "
           "amplify rounding on the way back (1/gamma per step). Invert and Sample must use the same value. "
           "Ignored by o_belm."
           if invertible else
           "BDIA's gamma, 0 to 1: 0 is DDIM, the authors sample with 0.5. Ignored by o_belm.")
    return io.Float.Input("gamma", default=default, min=0.0, max=1.0, step=0.01, round=0.001, tooltip=use)


def schedule_input() -> io.Sigmas.Input:
    return io.Sigmas.Input("sigmas", tooltip="The descending schedule to sample with, at least 2 steps (e.g. "
                                             "BasicScheduler; its denoise below 1, or SplitSigmas' second "
                                             "part, inverts only part of the way, an edit strength). "
                                             "Inversion walks it backwards.")


def checked_rule(node: str, name: str, gamma: float, invertible: bool = True, model=None) -> Bidirectional:
    """The rule the inputs name; for the model's family when ``model`` is given (O-BELM's weight
    depends on it), else the family is read when the SAMPLER runs."""
    family = "eps" if model is None else model_family(model.get_model_object("model_sampling"))
    try:
        return rule_for(name, gamma, invertible, family)
    except ValueError as err:
        raise NodeInputError(node, "gamma" if name in METHODS else "method", f"is not usable: {err}") from err


def checked_schedule(node: str, sigmas: torch.Tensor) -> list:
    try:
        return check_schedule(sigmas.tolist())
    except ValueError as err:
        raise NodeInputError(node, "sigmas", f"is not usable: {err}") from err


def check_gain(node: str, schedule: list, rule: Bidirectional, state_dtype: torch.dtype) -> None:
    """Refuse an inversion whose rounding would be a visible part of the inverted pair."""
    gain = inversion_gain(schedule, rule)
    share = gain * torch.finfo(state_dtype).eps
    if share > MAX_ROUNDING_SHARE:
        where, fix = (("gamma", "use the float64 precision, raise gamma (0.92-1.0) or use fewer steps")
                      if rule.name == "bdia" else
                      ("sigmas", "use the float64 precision or a schedule whose last steps are not far "
                                 "smaller than its first"))
        raise NodeInputError(node, where, f"would grow rounding {gain:.1e}-fold on the way back ({rule.settings()}, "
                             f"{len(schedule) - 1} steps, {str(state_dtype).removeprefix('torch.')} state): the "
                             f"inverted pair would be {share:.0%} rounding; {fix}")


class BidirectionalInvertNode(io.ComfyNode):
    DISPLAY = "BDIA / O-BELM Invert (Guidance Lab)"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GuidanceLab_BidirectionalInvert",
            display_name=cls.DISPLAY,
            category="Guidance Lab/inversion",
            description="BDIA (Zhang et al. 2023) or O-BELM (Wang et al. 2024): inverts a latent (e.g. from "
                        "VAEEncode) exactly at one model evaluation per step, into the pair of states at the "
                        "schedule's first two sigmas. BDIA / O-BELM Sample turns the pair back into exactly "
                        "this latent (to rounding) with the same prompt; sample with an edited prompt to edit "
                        "the image. Eps, v-prediction and flow models.",
            inputs=[
                *model_and_prompt_inputs(),
                cfg_input(default=3.0),
                schedule_input(),
                method_input(),
                gamma_input(EDIT_GAMMA, invertible=True),
                io.Latent.Input("latent_image", tooltip="The latent to invert, e.g. VAEEncode of an image."),
                io.Combo.Input("precision", options=list(PRECISIONS), default="float64",
                               tooltip="Precision of the pair (the model runs in its own dtype). float64 keeps "
                                       "the round trip at rounding level; float32 drifts (about 1e-6 to 1e-4 "
                                       "relative at 50 steps) and is for devices without float64 (MPS)."),
                guidance_input(),
            ],
            outputs=[
                BIDIRECTIONAL_PAIR.Output(display_name="pair",
                                          tooltip="The two states and what they were made with (schedule, "
                                                  "method, gamma, model, shape), for BDIA / O-BELM Sample."),
                io.Latent.Output(display_name="noise_preview",
                                 tooltip="The inverted noise (the upper state), to look at."),
            ],
        )

    @classmethod
    @checks_inputs
    def execute(cls, model, positive, negative, cfg, sigmas, method, gamma, latent_image, precision,
                guidance=None) -> io.NodeOutput:
        node = cls.DISPLAY
        rule, schedule = checked_rule(node, method, gamma, model=model), checked_schedule(node, sigmas)
        state_dtype = checked_precision(node, precision)
        check_gain(node, schedule, rule, state_dtype)
        policy = edict_policy(node, cfg, guidance, model)
        guider = build_guider(node, model, positive, negative, lambda: policy)
        latent = checked_latent(node, model, latent_image, "BDIA / O-BELM")
        fingerprint = model_fingerprint(model)
        upper, lower, upper_low, lower_low = bidirectional_invert(guider, latent, sigmas, rule, state_dtype)
        pair = BidirectionalPair(upper, lower, tuple(schedule), sigmas.detach().cpu().clone(), rule, fingerprint,
                                 tuple(latent.shape), guider.model_family(), f"{policy.name} {policy.settings()}",
                                 upper_low, lower_low)
        return io.NodeOutput(pair, {"samples": to_latent_space(model, upper)})


class BidirectionalSampleNode(io.ComfyNode):
    DISPLAY = "BDIA / O-BELM Sample (Guidance Lab)"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GuidanceLab_BidirectionalSample",
            display_name=cls.DISPLAY,
            category="Guidance Lab/inversion",
            description="Samples a BDIA / O-BELM pair back down its schedule, one model evaluation per step: "
                        "with the prompt it was inverted with it returns the original latent to rounding; "
                        "with an edited prompt it edits the image and keeps the rest. Refuses a pair made "
                        "with another model, schedule, method or gamma.",
            inputs=[
                *model_and_prompt_inputs(),
                cfg_input(default=3.0),
                schedule_input(),
                method_input(),
                gamma_input(EDIT_GAMMA, invertible=True),
                BIDIRECTIONAL_PAIR.Input("pair", tooltip="BDIA / O-BELM Invert's pair output."),
                guidance_input(),
            ],
            outputs=[io.Latent.Output(tooltip="The sampled latent (the state at the end of the schedule).")],
        )

    @classmethod
    @checks_inputs
    def execute(cls, model, positive, negative, cfg, sigmas, method, gamma, pair, guidance=None) -> io.NodeOutput:
        node = cls.DISPLAY
        rule, schedule = checked_rule(node, method, gamma, model=model), checked_schedule(node, sigmas)
        if not isinstance(pair, BidirectionalPair):
            raise NodeInputError(node, "pair", f"is {type(pair).__name__}, not a BDIA / O-BELM pair; connect "
                                               f"BDIA / O-BELM Invert's pair output")
        channels = model.get_model_object("latent_format").latent_channels
        problem = pair.mismatch(schedule, rule, model_fingerprint(model), channels)
        if problem:
            raise NodeInputError(node, "pair", problem)
        policy = edict_policy(node, cfg, guidance, model)
        guider = build_guider(node, model, positive, negative, lambda: policy)
        # Along the schedule it was inverted along, bit for bit (the input matched it to 1e-6).
        return io.NodeOutput({"samples": bidirectional_sample(guider, pair)[0]})


class BidirectionalSamplerNode(io.ComfyNode):
    DISPLAY = "BDIA / O-BELM Sampler (Guidance Lab)"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GuidanceLab_BidirectionalSampler",
            display_name=cls.DISPLAY,
            category="Guidance Lab/sampling",
            description="BDIA or O-BELM as a plain sampler from noise (one model evaluation per step, the first "
                        "a DDIM step), for SamplerCustomAdvanced or Guided Sampler. Any guider, eps/v/flow.",
            inputs=[method_input(), gamma_input(SAMPLING_GAMMA, invertible=False)],
            outputs=[io.Sampler.Output(tooltip="Plug into a SamplerCustomAdvanced or Guided Sampler node.")],
        )

    @classmethod
    @checks_inputs
    def execute(cls, method, gamma) -> io.NodeOutput:
        return io.NodeOutput(bidirectional_sampler(checked_rule(cls.DISPLAY, method, gamma, invertible=False),
                                                   cls.DISPLAY))
