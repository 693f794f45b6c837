"""EDICT exact inversion (Wallace et al. 2022): a latent inverted into a coupled pair, and the
pair sampled back with the same prompt (the same latent, to rounding) or an edited one."""

from __future__ import annotations

import comfy.model_management
import torch
from comfy_api.latest import io

from ..guiders import CFGPolicy, GuidancePolicy
from ..samplers.edict import DEFAULT_P, check_invertible, check_mixing_weight, check_schedule
from .bridge.fingerprint import model_fingerprint
from .bridge.inversion import EdictLatent, edict_invert, edict_sample, model_latent, to_latent_space
from .bridge.policy_guider import PolicyGuider
from .guider_common import build_guider, cfg_input, model_and_prompt_inputs, require_policy_fits
from .validation import NodeInputError, checks_inputs

EDICT_LATENT = io.Custom("EDICT_LATENT")
PRECISIONS = {"float64": torch.float64, "float32": torch.float32}


def schedule_input() -> io.Sigmas.Input:
    return io.Sigmas.Input("sigmas", tooltip="The descending schedule to sample with (e.g. BasicScheduler; "
                                             "its denoise below 1, or SplitSigmas' second part, inverts only "
                                             "part of the way, an edit strength). Inversion walks it backwards.")


def mixing_input() -> io.Float.Input:
    return io.Float.Input("mixing_weight", default=DEFAULT_P, min=0.0, max=1.0, step=0.01, round=0.001,
                          tooltip="EDICT's p, strictly between 0 and 1 (paper: 0.93). Lower values couple the "
                                  "two sequences more but amplify rounding on the way back (1/p^2 per step); "
                                  "EDICT Invert and EDICT Sample must use the same value.")


def guidance_input() -> io.Guider.Input:
    return io.Guider.Input("guidance", optional=True,
                           tooltip="Optional: a Guidance Lab guider whose guidance method and scale replace "
                                   "plain CFG at 'cfg' (its model and prompts are not used). Only methods "
                                   "without state across steps invert exactly: CFG, APG with momentum 0.")


def checked_schedule(node: str, sigmas: torch.Tensor) -> list:
    try:
        return check_schedule(sigmas.tolist())
    except ValueError as err:
        raise NodeInputError(node, "sigmas", f"is not usable: {err}") from err


def checked_p(node: str, p: float) -> float:
    try:
        return check_mixing_weight(p)
    except ValueError as err:
        raise NodeInputError(node, "mixing_weight", f"is not usable: {err}") from err


def edict_policy(node: str, cfg: float, guidance, model) -> GuidancePolicy:
    """Plain CFG at ``cfg``, or the connected guider's policy, refused if it keeps state or is
    tied to another model than ``model``."""
    if guidance is None:
        return CFGPolicy(scale=float(cfg))
    if not isinstance(guidance, PolicyGuider):
        raise NodeInputError(node, "guidance", f"must come from a Guidance Lab guider node (CFG or APG Guider), "
                                               f"got {type(guidance).__name__}")
    try:
        check_invertible(guidance.policy)
    except ValueError as err:
        raise NodeInputError(node, "guidance", f"cannot be inverted: {err}") from err
    return require_policy_fits(node, "guidance", guidance, model)


def conditioning_rows(conditioning) -> int:
    return max(int(t.shape[0]) for t, _options in conditioning)


def conditioning_part(conditioning, start: int, stop: int) -> list:
    """Rows start..stop-1 of a per-frame CONDITIONING (single-row entries are kept whole)."""
    def rows(t):
        return t[start:stop] if isinstance(t, torch.Tensor) and t.shape[0] > 1 else t
    return [[rows(t), {k: rows(v) for k, v in options.items()}] for t, options in conditioning]


class EdictInvertNode(io.ComfyNode):
    DISPLAY = "EDICT Invert (Guidance Lab)"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GuidanceLab_EDICTInvert",
            display_name=cls.DISPLAY,
            category="Guidance Lab/inversion",
            description="EDICT (Wallace et al. 2022): inverts a latent (e.g. from VAEEncode) into two coupled "
                        "noise sequences that EDICT Sample turns back into exactly this latent (to rounding) "
                        "with the same prompt, at any guidance scale; sample with an edited prompt to edit "
                        "the image. Two model evaluations per step.",
            inputs=[
                *model_and_prompt_inputs(),
                cfg_input(default=3.0),
                schedule_input(),
                mixing_input(),
                io.Latent.Input("latent_image", tooltip="The latent to invert, e.g. VAEEncode of an image."),
                io.Combo.Input("precision", options=list(PRECISIONS), default="float64",
                               tooltip="Precision of the coupled pair (the model runs in its own dtype). "
                                       "float64 keeps the round trip at rounding level; float32 drifts "
                                       "(1e-6 to 1e-3 at 50 steps, far more at 200 or at low p) and is for "
                                       "devices without float64 (MPS)."),
                guidance_input(),
            ],
            outputs=[
                EDICT_LATENT.Output(display_name="edict_latent",
                                    tooltip="Both sequences and what they were made with (schedule, p, model, "
                                            "shape), for EDICT Sample."),
                io.Latent.Output(display_name="noise_preview",
                                 tooltip="The inverted noise (sequence x), to look at; sample with EDICT Sample."),
            ],
        )

    @classmethod
    @checks_inputs
    def execute(cls, model, positive, negative, cfg, sigmas, mixing_weight, latent_image, precision,
                guidance=None) -> io.NodeOutput:
        node = cls.DISPLAY
        p, schedule = checked_p(node, mixing_weight), checked_schedule(node, sigmas)
        state_dtype = checked_precision(node, precision)
        policy = edict_policy(node, cfg, guidance, model)
        guider = build_guider(node, model, positive, negative, lambda: policy)
        latent = checked_latent(node, model, latent_image, "EDICT")
        fingerprint = model_fingerprint(model)
        x, y = edict_invert(guider, latent, sigmas, p, state_dtype)
        edict = EdictLatent(x, y, tuple(schedule), sigmas.detach().cpu().clone(), p, fingerprint,
                            tuple(latent.shape), guider.model_family(), f"{policy.name} {policy.settings()}")
        return io.NodeOutput(edict, {"samples": to_latent_space(model, x)})


def checked_precision(node: str, precision: str) -> torch.dtype:
    """The inverted state's dtype; float64 refused where the device lacks it."""
    state_dtype = PRECISIONS[precision]
    if state_dtype == torch.float64 and comfy.model_management.get_torch_device().type == "mps":
        raise NodeInputError(node, "precision", "is float64, which this device (MPS) lacks; choose float32")
    return state_dtype


def checked_latent(node: str, model, latent_image: dict, method: str) -> torch.Tensor:
    """The latent to invert, in the model's space; a nested (multi-part) latent refused."""
    latent = model_latent(model, latent_image)
    if getattr(latent, "is_nested", False):
        raise NodeInputError(node, "latent_image", f"is a nested (multi-part) latent; {method} inverts one "
                                                   "image or video latent")
    if not latent.any():
        # ComfyUI moves only a latent with a nonzero entry into the model's space (an empty
        # latent is noise's start); where that move shifts, an all-zero one would be inverted unmoved.
        fmt = model.get_model_object("latent_format")
        if fmt.process_in(latent[:1]).any():
            raise NodeInputError(node, "latent_image", "is all zeros (an empty latent): ComfyUI does not move it "
                                 "into this model's latent space, so it is no image to invert; encode one with "
                                 "VAEEncode")
    return latent


class EdictSampleNode(io.ComfyNode):
    DISPLAY = "EDICT Sample (Guidance Lab)"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GuidanceLab_EDICTSample",
            display_name=cls.DISPLAY,
            category="Guidance Lab/inversion",
            description="Samples an EDICT latent back down its schedule: with the prompt it was inverted with "
                        "it returns the original latent to rounding; with an edited prompt it edits the image "
                        "and keeps the rest. Refuses a latent made with another model, schedule or p.",
            inputs=[
                *model_and_prompt_inputs(),
                cfg_input(default=3.0),
                schedule_input(),
                mixing_input(),
                EDICT_LATENT.Input("edict_latent", tooltip="EDICT Invert's edict_latent output."),
                guidance_input(),
            ],
            outputs=[io.Latent.Output(tooltip="The sampled latent (sequence x at the end of the schedule).")],
        )

    @classmethod
    @checks_inputs
    def execute(cls, model, positive, negative, cfg, sigmas, mixing_weight, edict_latent,
                guidance=None) -> io.NodeOutput:
        node = cls.DISPLAY
        p, schedule = checked_p(node, mixing_weight), checked_schedule(node, sigmas)
        if not isinstance(edict_latent, EdictLatent):
            raise NodeInputError(node, "edict_latent", f"is {type(edict_latent).__name__}, not an EDICT latent; "
                                                       f"connect EDICT Invert's edict_latent output")
        channels = model.get_model_object("latent_format").latent_channels
        problem = edict_latent.mismatch(schedule, p, model_fingerprint(model), channels)
        if problem:
            raise NodeInputError(node, "edict_latent", problem)
        policy = edict_policy(node, cfg, guidance, model)
        guider = build_guider(node, model, positive, negative, lambda: policy)
        chunks = edict_latent.chunks()
        if len(chunks) > 1 and conditioning_rows(positive) not in (1, edict_latent.shape[0]):
            raise NodeInputError(node, "positive", f"holds {conditioning_rows(positive)} prompt rows for "
                                 f"{edict_latent.shape[0]} frames; connect EDICT Interpolate's conditioning")
        # The schedule it was inverted along, bit for bit (the input matched it to 1e-6).
        parts = []
        for start, stop in chunks:
            if len(chunks) > 1:
                guider = build_guider(node, model, conditioning_part(positive, start, stop), negative,
                                      lambda: policy)
            parts.append(edict_sample(guider, edict_latent.part(start, stop), edict_latent.schedule)[0])
        return io.NodeOutput({"samples": torch.cat(parts)})
