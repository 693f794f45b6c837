"""A picture of a guided run: NFE per step, cosine similarity, guidance norm, AG's switch."""

from __future__ import annotations

import numpy as np
import torch
from comfy_api.latest import io

from .bridge.record_plot import parse_record, plot_record
from .validation import NodeInputError, checks_inputs


class RecordPlotNode(io.ComfyNode):
    DISPLAY = "Guidance Record Plot (Guidance Lab)"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GuidanceLab_RecordPlot",
            display_name=cls.DISPLAY,
            category="Guidance Lab/diagnostics",
            description="Plots a run's per-step record from the Guided Sampler: model evaluations "
                        "per step, and whatever the policy measured (Adaptive Guidance's agreement, "
                        "guidance norm), with Adaptive Guidance's switch marked.",
            inputs=[io.String.Input("record", force_input=True,
                                    tooltip="The Guided Sampler's 'record' output (JSON).")],
            outputs=[io.Image.Output(tooltip="The plot, to preview or save.")],
        )

    @classmethod
    @checks_inputs
    def execute(cls, record) -> io.NodeOutput:
        try:
            data = parse_record(record)
        except ValueError as err:
            raise NodeInputError(cls.DISPLAY, "record", f"cannot be plotted: {err}; connect the 'record' "
                                 "output of a Guided Sampler driven by a Guidance Lab guider") from None
        pixels = np.asarray(plot_record(data), dtype=np.float32) / 255.0
        return io.NodeOutput(torch.from_numpy(pixels)[None])
