"""Adaptive Guidance (AG): wraps any Guidance Lab guider and drops uncond once it stops mattering."""

from __future__ import annotations

from comfy_api.latest import io

from ..guiders.adaptive import AdaptivePolicy
from .guider_common import guider_output, require_pack_guider


class AdaptiveGuiderNode(io.ComfyNode):
    DISPLAY = "Adaptive Guidance (Guidance Lab)"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GuidanceLab_AdaptiveGuidance",
            display_name=cls.DISPLAY,
            category="Guidance Lab/guiders",
            description="Adaptive Guidance (Castillo et al. 2025): runs the connected guider until "
                        "the conditional and unconditional noise estimates agree (cosine above the "
                        "threshold), then evaluates the conditional prompt only, saving model calls.",
            inputs=[
                io.Guider.Input("guider", tooltip="A Guidance Lab guider (CFG or APG) to run until the switch."),
                io.Float.Input("threshold", default=0.995, min=0.0, max=1.0, step=0.0005, round=0.0001,
                               tooltip="Switch to conditional-only once cos(eps_c, eps_u) exceeds this. "
                                       "Higher switches later (closer to the guider, fewer savings)."),
            ],
            outputs=[guider_output()],
        )

    @classmethod
    def execute(cls, guider, threshold) -> io.NodeOutput:
        inner = require_pack_guider(cls.DISPLAY, "guider", guider)
        try:
            policy = AdaptivePolicy(threshold=float(threshold), inner=inner.policy)
        except ValueError as err:
            raise ValueError(f"{cls.DISPLAY}: input 'threshold': {err}") from err
        return io.NodeOutput(inner.with_policy(policy, cls.DISPLAY))
