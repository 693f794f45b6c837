"""Hallucination detection by trajectory variance (Aithal et al. 2024): score a sampled batch
from its run record, and split it into kept and flagged images."""

from __future__ import annotations

import json

import numpy as np
import torch
from comfy_api.latest import io, ui
from comfy_execution.graph_utils import ExecutionBlocker

from ..guiders.trajectory_variance import DEFAULT_WINDOW, split_by_score
from .bridge.hallucination import record_scores, score_plot
from .validation import NodeInputError, checks_inputs

# Threshold of the Filter node's default: chosen on the flow default model at CFG 3 on seeds the
# benchmark does not score (docs/benchmark/hallucination/). In latent units: another model's
# latent scale needs its own (or the keep-best mode).
DEFAULT_THRESHOLD = 0.0011

RECORD_TOOLTIP = ("The 'record' output of a Guided Sampler, or of a Guidance Report connected to a KSampler "
                  "whose MODEL went through Guidance Model Patch (JSON). It carries each sample's score.")


def _scores(node: str, record):
    try:
        return record_scores(record)
    except ValueError as err:
        raise NodeInputError(node, "record", f"cannot be read: {err}") from None


def _picture(scores, threshold, kept, title) -> torch.Tensor:
    pixels = np.asarray(score_plot(scores, threshold, kept, title), dtype=np.float32) / 255.0
    return torch.from_numpy(pixels)[None]


class HallucinationScoreNode(io.ComfyNode):
    DISPLAY = "Hallucination Score (Guidance Lab)"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GuidanceLab_HallucinationScore",
            display_name=cls.DISPLAY,
            category="Guidance Lab/diagnostics",
            description="Each sample's hallucination score: the variance of its denoised estimates over the "
                        f"last steps of sampling (noise level <= {DEFAULT_WINDOW:g}), which is high where the "
                        "model interpolates between modes of its data (Aithal et al. 2024). Read from the run "
                        "record: no extra model evaluation.",
            inputs=[io.String.Input("record", force_input=True, tooltip=RECORD_TOOLTIP)],
            outputs=[
                io.String.Output(display_name="scores", tooltip="Per-sample scores, a JSON list in batch order."),
                io.Image.Output(display_name="plot", tooltip="The scores as bars, to preview or save."),
            ],
        )

    @classmethod
    @checks_inputs
    def execute(cls, record) -> io.NodeOutput:
        scores, block = _scores(cls.DISPLAY, record)
        text = json.dumps(scores)
        title = f"{len(scores)} samples, {block.get('estimates')} estimates at noise level <= " \
                f"{block.get('window_noise_level')}"
        return io.NodeOutput(text, _picture(scores, None, [True] * len(scores), title), ui=ui.PreviewText(text))


class HallucinationFilterNode(io.ComfyNode):
    DISPLAY = "Hallucination Filter (Guidance Lab)"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GuidanceLab_HallucinationFilter",
            display_name=cls.DISPLAY,
            category="Guidance Lab/diagnostics",
            description="Splits a sampled batch by its hallucination score (trajectory variance, Aithal et al. "
                        "2024): images at or below the threshold are kept, the others flagged; or keeps the "
                        "k lowest-scored. A side left with no image is blocked: the nodes it feeds (its Save "
                        "Image) do not run, as a stock Save Image cannot save an empty batch.",
            inputs=[
                io.Image.Input("images", tooltip="The decoded batch of the run the record describes, in "
                                                 "batch order (VAE Decode of the sampler's output)."),
                io.String.Input("record", force_input=True, tooltip=RECORD_TOOLTIP),
                io.Combo.Input("mode", options=["threshold", "keep_best"], default="threshold",
                               tooltip="threshold: keep every image scored at or below 'threshold'. keep_best: "
                                       "keep the 'keep' lowest-scored images (any model, no threshold to set)."),
                io.Float.Input("threshold", default=DEFAULT_THRESHOLD, min=0.0, max=1e6, step=0.0001, round=1e-7,
                               tooltip="Highest score kept (mode 'threshold'). The default was chosen on the "
                                       "pack's flow default model at CFG 3; other models have other scales."),
                io.Int.Input("keep", default=4, min=0, max=4096,
                             tooltip="How many images to keep (mode 'keep_best')."),
            ],
            outputs=[
                io.Image.Output(display_name="kept", tooltip="The images judged in the data's support."),
                io.Image.Output(display_name="flagged", tooltip="The images flagged as likely hallucinations."),
                io.Image.Output(display_name="plot", tooltip="Per-sample scores, kept green, flagged red."),
                io.String.Output(display_name="report", tooltip="Scores and decisions, as text."),
            ],
        )

    @classmethod
    @checks_inputs
    def execute(cls, images, record, mode, threshold, keep) -> io.NodeOutput:
        scores, block = _scores(cls.DISPLAY, record)
        if images.shape[0] != len(scores):
            raise NodeInputError(cls.DISPLAY, "images", f"holds {images.shape[0]} images but the record scores "
                                 f"{len(scores)} samples; connect the decoded output of the run that made the "
                                 "record, without reordering or cropping the batch")
        kept = split_by_score(scores, threshold=float(threshold)) if mode == "threshold" else \
            split_by_score(scores, keep_best=int(keep))
        mask = torch.tensor(kept, dtype=torch.bool, device=images.device)
        rule = f"score <= {threshold:g}" if mode == "threshold" else f"the {keep} lowest scores"
        line = lambda i: f"{i}: {scores[i]:.4g} {'kept' if kept[i] else 'FLAGGED'}"  # noqa: E731
        report = "\n".join([f"kept {sum(kept)} of {len(kept)} ({rule})", *map(line, range(len(scores)))])
        cut = max(s for s, k in zip(scores, kept) if k) if mode == "keep_best" and any(kept) else None
        plot = _picture(scores, float(threshold) if mode == "threshold" else cut, kept,
                        f"kept {sum(kept)} of {len(kept)} ({rule})")
        side = lambda keep: images[keep] if bool(keep.any()) else ExecutionBlocker(None)  # noqa: E731
        return io.NodeOutput(side(mask), side(~mask), plot, report, ui=ui.PreviewText(report))
