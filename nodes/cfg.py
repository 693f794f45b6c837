"""CFG through the pack's core: bit-for-bit ComfyUI's CFGGuider, with an NFE record."""

from __future__ import annotations

from comfy_api.latest import io

from ..guiders import CFGPolicy
from .guider_common import build_guider, cfg_input, guider_output, model_and_prompt_inputs
from .validation import checks_inputs


class CFGGuiderNode(io.ComfyNode):
    DISPLAY = "CFG Guider (Guidance Lab)"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GuidanceLab_CFGGuider",
            display_name=cls.DISPLAY,
            category="Guidance Lab/guiders",
            description="Classifier-free guidance run by the Guidance Lab core: the same "
                        "numbers as ComfyUI's CFGGuider, plus a per-step record of model "
                        "evaluations (see the Guided Sampler's report).",
            inputs=[*model_and_prompt_inputs(), cfg_input()],
            outputs=[guider_output()],
        )

    @classmethod
    @checks_inputs
    def execute(cls, model, positive, negative, cfg) -> io.NodeOutput:
        return io.NodeOutput(build_guider(cls.DISPLAY, model, positive, negative,
                                          lambda: CFGPolicy(scale=float(cfg))))
