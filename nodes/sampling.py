"""Sampling nodes: the pack's samplers, and a sampler node that reports what a run cost."""

from __future__ import annotations

from comfy_api.latest import io, ui
from comfy_extras.nodes_custom_sampler import SamplerCustomAdvanced

from .bridge.policy_guider import run_record
from .bridge.samplers import pack_sampler
from ..samplers import REGISTRY
from .validation import NodeInputError, checks_inputs


class SamplerSelectNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GuidanceLab_SamplerSelect",
            display_name="Sampler (Guidance Lab)",
            category="Guidance Lab/sampling",
            description="The pack's own samplers, which share one loop, progress bar and callback.",
            inputs=[
                io.Combo.Input("sampler_name", options=list(REGISTRY), default="euler",
                               tooltip=" ".join(f"{s.name}: {s.description}" for s in REGISTRY.values())
                               + " For *_cfg_pp set the guider's cfg to lambda (about 0.4-1.0). "
                                 "Any guider, eps/v/flow models."),
            ],
            outputs=[io.Sampler.Output(tooltip="Plug into a SamplerCustomAdvanced or Guided Sampler node.")],
        )

    @classmethod
    @checks_inputs
    def execute(cls, sampler_name) -> io.NodeOutput:
        if sampler_name not in REGISTRY:
            raise NodeInputError("Sampler (Guidance Lab)", "sampler_name",
                                 f"is {sampler_name!r}; choose one of {sorted(REGISTRY)}")
        return io.NodeOutput(pack_sampler(sampler_name))


class GuidedSamplerNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GuidanceLab_GuidedSampler",
            display_name="Guided Sampler (Guidance Lab)",
            category="Guidance Lab/sampling",
            description="SamplerCustomAdvanced plus a report of the run: model evaluations (NFE) "
                        "per step and the guidance policy's decisions.",
            inputs=[
                io.Noise.Input("noise", tooltip="Noise source (RandomNoise, DisableNoise)."),
                io.Guider.Input("guider", tooltip="Any GUIDER; Guidance Lab guiders also report their NFE."),
                io.Sampler.Input("sampler", tooltip="Any SAMPLER (KSamplerSelect or the pack's)."),
                io.Sigmas.Input("sigmas", tooltip="The noise schedule (e.g. BasicScheduler)."),
                io.Latent.Input("latent_image", tooltip="The latent to start from."),
            ],
            outputs=[
                io.Latent.Output(display_name="output", tooltip="The sampled latent."),
                io.Latent.Output(display_name="denoised_output", tooltip="The last denoised estimate."),
                io.String.Output(display_name="report", tooltip="NFE and policy decisions of this run, as text."),
                io.String.Output(display_name="record", tooltip="The run's per-step record as JSON, for the "
                                                                 "Guidance Record Plot node or scripts."),
            ],
        )

    @classmethod
    @checks_inputs
    def execute(cls, noise, guider, sampler, sigmas, latent_image) -> io.NodeOutput:
        out, denoised = SamplerCustomAdvanced.execute(noise, guider, sampler, sigmas, latent_image).args[:2]
        record = run_record(guider)
        report = record.summary() if record is not None else (
            f"{type(guider).__name__} is not a Guidance Lab guider: its model evaluations are not recorded.")
        record_json = record.to_json() if record is not None else "{}"
        return io.NodeOutput(out, denoised, report, record_json, ui=ui.PreviewText(report))
