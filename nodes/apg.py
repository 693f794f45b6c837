"""Adaptive projected guidance (APG) as a guider node."""

from __future__ import annotations

from comfy_api.latest import io

from ..guiders.apg import PRESETS, APGPolicy
from .guider_common import build_guider, cfg_input, guider_output, model_and_prompt_inputs
from .validation import checks_inputs

CUSTOM = "custom (use the values below)"


class APGGuiderNode(io.ComfyNode):
    DISPLAY = "APG Guider (Guidance Lab)"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GuidanceLab_APGGuider",
            display_name=cls.DISPLAY,
            category="Guidance Lab/guiders",
            description="Adaptive projected guidance (Sadat et al. 2025): CFG's update split into "
                        "parts parallel and orthogonal to the conditional prediction, with the "
                        "oversaturating parallel part down-weighted, plus norm rescaling and "
                        "negative momentum. Allows high guidance scales without burnt colours.",
            inputs=[
                *model_and_prompt_inputs(),
                cfg_input(default=10.0),
                io.Combo.Input("preset", options=[*PRESETS, CUSTOM], default="SD1.5",
                               tooltip="Published settings (eta, norm threshold, momentum) per model; "
                                       "'custom' uses the three inputs below."),
                io.Float.Input("eta", default=0.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="Weight of the parallel (saturating) part of the update; 1 with "
                                       "threshold 0 and momentum 0 is plain CFG. Used with 'custom'."),
                io.Float.Input("norm_threshold", default=6.5, min=0.0, max=100.0, step=0.1,
                               tooltip="Caps the update's norm per sample (r); 0 disables. Used with 'custom'."),
                io.Float.Input("momentum", default=-0.5, min=-1.0, max=1.0, step=0.01,
                               tooltip="beta of the update's running average; negative values (-0.5) "
                                       "are recommended. Used with 'custom'."),
            ],
            outputs=[guider_output()],
        )

    @classmethod
    @checks_inputs
    def execute(cls, model, positive, negative, cfg, preset, eta, norm_threshold, momentum) -> io.NodeOutput:
        def policy():
            if preset == CUSTOM:
                return APGPolicy(float(cfg), float(eta), float(norm_threshold), float(momentum))
            if preset not in PRESETS:
                raise ValueError(f"input 'preset' is {preset!r}; choose one of {[*PRESETS, CUSTOM]}")
            return APGPolicy.from_preset(preset, float(cfg))

        return io.NodeOutput(build_guider(cls.DISPLAY, model, positive, negative, policy))
