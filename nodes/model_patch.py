"""Any pack policy on the stock KSampler: a MODEL patch, and the node that shows its report."""

from __future__ import annotations

from comfy_api.latest import io, ui

from .bridge.model_patch import patch_model, patched_policy, run_record
from .guider_common import require_pack_guider, require_policy_fits
from .validation import NodeInputError, checks_inputs


class GuidanceModelPatchNode(io.ComfyNode):
    DISPLAY = "Guidance Model Patch (Guidance Lab)"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GuidanceLab_ModelPatch",
            display_name=cls.DISPLAY,
            category="Guidance Lab/guiders",
            description="Patches the MODEL so that the stock KSampler, KSamplerAdvanced or SamplerCustom "
                        "runs the connected Guidance Lab guider's policy (CFG, APG, Adaptive Guidance, "
                        "LinearAG), with the sampler's cfg as the scale; skipped unconditional "
                        "evaluations are really skipped. Each run keeps its own state. Connect the "
                        "sampled LATENT to a Guidance Report node to see what the run cost.",
            inputs=[
                io.Model.Input("model", tooltip="The model to patch (not one already patched by this node)."),
                io.Guider.Input("guider", tooltip="A Guidance Lab guider node, configured as you like: its "
                                                  "policy is used; its cfg is replaced by the sampler's cfg "
                                                  "(LinearAG: the sampler's cfg must be the calibration's)."),
            ],
            outputs=[io.Model.Output(tooltip="The patched model, for KSampler and friends.")],
        )

    @classmethod
    @checks_inputs
    def execute(cls, model, guider) -> io.NodeOutput:
        policy = require_policy_fits(cls.DISPLAY, "guider", require_pack_guider(cls.DISPLAY, "guider", guider), model)
        existing = patched_policy(model)
        if existing is not None:
            # Two policies cannot both decide the guided estimate; nesting them silently would
            # hide which one ran. Combinations (AG around APG) are built with the guider nodes.
            raise NodeInputError(cls.DISPLAY, "model", f"is already patched with the {existing.name} policy; "
                                 "connect the unpatched model (combine methods, e.g. Adaptive Guidance "
                                 "around APG, with the guider nodes)")
        return io.NodeOutput(patch_model(model, policy, cls.DISPLAY))


class GuidanceReportNode(io.ComfyNode):
    DISPLAY = "Guidance Report (Guidance Lab)"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GuidanceLab_GuidanceReport",
            display_name=cls.DISPLAY,
            category="Guidance Lab/diagnostics",
            is_output_node=True,
            description="Shows the NFE report of the run that sampled this LATENT with a model from "
                        "Guidance Model Patch (the record travels with the latent, so each run shows "
                        "its own).",
            inputs=[io.Latent.Input("latent", tooltip="The LATENT output of the KSampler (connected "
                                                      "directly: a node in between makes a new latent).")],
            outputs=[
                io.String.Output(display_name="report",
                                 tooltip="NFE and policy decisions of the run, as text."),
                io.String.Output(display_name="record", tooltip="The run's per-step record as JSON, for the "
                                                                 "Guidance Record Plot node or scripts."),
            ],
        )

    @classmethod
    @checks_inputs
    def execute(cls, latent) -> io.NodeOutput:
        record = run_record(latent)
        if record is None:
            report = ("This latent carries no Guidance Lab record: connect the LATENT output of a sampler "
                      "whose MODEL comes from Guidance Model Patch, directly.")
            return io.NodeOutput(report, "{}", ui=ui.PreviewText(report))
        report = record.summary()
        return io.NodeOutput(report, record.to_json(), ui=ui.PreviewText(report))
