"""CFG through the pack's core: bit-for-bit ComfyUI's CFGGuider, with an NFE record."""

from __future__ import annotations

from comfy_api.latest import io

from ..comfy_bridge.guider import PolicyGuider
from ..guiders import CFGPolicy
from .validation import require_conditioning, require_finite


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
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to sample with."),
                io.Conditioning.Input("positive", tooltip="What the image should show (conditional prompt)."),
                io.Conditioning.Input("negative", tooltip="What to steer away from (unconditional / negative prompt)."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Guidance scale w in D_u + w (D_c - D_u). 1.0 disables guidance "
                                       "and skips the unconditional evaluation."),
            ],
            outputs=[io.Guider.Output(tooltip="Plug into a SamplerCustomAdvanced or Guided Sampler node.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, cfg) -> io.NodeOutput:
        require_conditioning(cls.DISPLAY, "positive", positive)
        require_conditioning(cls.DISPLAY, "negative", negative)
        policy = CFGPolicy(scale=float(require_finite(cls.DISPLAY, "cfg", cfg)))
        guider = PolicyGuider(model, policy, node_name=cls.DISPLAY)
        guider.set_conds(positive, negative)
        return io.NodeOutput(guider)
