"""DDIM inversion, the usual approximate inversion and EDICT's baseline: a latent noised up a
schedule by running the DDIM step backwards, for any stock sampler to denoise."""

from __future__ import annotations

import comfy.model_management
from comfy_api.latest import io

from ..guiders import CFGPolicy
from .bridge.inversion import ddim_invert, flow_top_is_singular, model_latent
from .edict import checked_schedule, schedule_input
from .guider_common import build_guider, cfg_input, model_and_prompt_inputs
from .validation import NodeInputError, checks_inputs


class DDIMInvertNode(io.ComfyNode):
    DISPLAY = "DDIM Invert (Guidance Lab)"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GuidanceLab_DDIMInvert",
            display_name=cls.DISPLAY,
            category="Guidance Lab/inversion",
            description="DDIM inversion: runs the DDIM step backwards up the schedule, taking each step's "
                        "noise estimate at the known state. Approximate: the round trip drifts, more with "
                        "guidance and with few steps (compare EDICT Invert). Denoise the result with any "
                        "sampler, noise disabled, on the same schedule.",
            inputs=[
                *model_and_prompt_inputs(),
                cfg_input(default=1.0),
                schedule_input(),
                io.Latent.Input("latent_image", tooltip="The latent to invert, e.g. VAEEncode of an image."),
            ],
            outputs=[io.Latent.Output(display_name="noised_latent",
                                      tooltip="The latent at the schedule's first sigma, as ComfyUI's samplers "
                                              "take it: KSamplerAdvanced (add_noise disable) or SamplerCustom "
                                              "(add_noise off) with the same sigmas continue from it.")],
        )

    @classmethod
    @checks_inputs
    def execute(cls, model, positive, negative, cfg, sigmas, latent_image) -> io.NodeOutput:
        node = cls.DISPLAY
        checked_schedule(node, sigmas)
        guider = build_guider(node, model, positive, negative, lambda: CFGPolicy(scale=float(cfg)))
        if flow_top_is_singular(guider.model_family(), sigmas):
            raise NodeInputError(node, "sigmas", "starts at sigma 1 on a flow model: ComfyUI keeps a partly "
                                 "noised flow latent as x / (1 - sigma), which has no value at sigma 1, so no "
                                 "sampler could continue from it; start below 1 (e.g. SplitSigmas after the "
                                 "first step, or a denoise below 1) or use EDICT Invert")
        latent = model_latent(model, latent_image)
        out = ddim_invert(guider, latent, sigmas)
        return io.NodeOutput({"samples": out.to(comfy.model_management.intermediate_device())})
