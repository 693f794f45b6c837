"""Adaptive Guidance (AG): wraps any Guidance Lab guider and drops uncond once it stops mattering."""

from __future__ import annotations

from comfy_api.latest import io

from ..guiders.adaptive import SPACES, AdaptivePolicy
from .guider_common import guider_output, require_pack_guider
from .validation import NodeInputError, checks_inputs


class AdaptiveGuiderNode(io.ComfyNode):
    DISPLAY = "Adaptive Guidance (Guidance Lab)"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GuidanceLab_AdaptiveGuidance",
            display_name=cls.DISPLAY,
            category="Guidance Lab/guiders",
            description="Adaptive Guidance (Castillo et al. 2025): runs the connected guider until "
                        "the conditional and unconditional estimates agree (agreement above the "
                        "threshold), then evaluates the conditional prompt only, saving model calls.",
            inputs=[
                io.Guider.Input("guider", tooltip="A Guidance Lab guider (CFG or APG) to run until the switch."),
                io.Float.Input("threshold", default=0.995, min=0.0, max=1.0, step=0.0005, round=0.0001,
                               tooltip="Switch to conditional-only once the cosine exceeds this. "
                                       "Higher switches later (closer to the guider, fewer savings)."),
                io.Combo.Input("space", options=list(SPACES), default="auto", optional=True,
                               tooltip="How agreement is measured. auto: the default for the model's "
                                       "family (guidance for eps, v-prediction and flow models). "
                                       "guidance: 1 - |D_c - D_u|^2 / (2 |D_c|^2), the paper's cosine "
                                       "without the noise term both estimates share. x0: cosine of the "
                                       "denoised estimates. eps: cosine of the noise estimates, the "
                                       "paper's reading; it is 1 at sigma = 1 on flow models (Flux, SD3) "
                                       "and ~1 on pixel-space models, so AG would switch at once. "
                                       "Check the switch step in the report."),
            ],
            outputs=[guider_output()],
        )

    @classmethod
    @checks_inputs
    def execute(cls, guider, threshold, space="auto") -> io.NodeOutput:
        inner = require_pack_guider(cls.DISPLAY, "guider", guider)
        if not inner.policy.uses_uncond:
            raise NodeInputError(cls.DISPLAY, "guider", f"runs {inner.policy.name}, which never evaluates the "
                                 "negative prompt: there is nothing for Adaptive Guidance to drop")
        if space not in SPACES:
            raise NodeInputError(cls.DISPLAY, "space", f"is {space!r}; choose one of {list(SPACES)}")
        try:
            policy = AdaptivePolicy(threshold=float(threshold), inner=inner.policy, space=space)
        except ValueError as err:
            raise ValueError(f"{cls.DISPLAY}: input 'threshold': {err}") from err
        return io.NodeOutput(inner.with_policy(policy, cls.DISPLAY))
