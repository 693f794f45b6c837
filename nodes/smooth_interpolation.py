"""Smooth Diffusion: latent interpolation between two noises and prompts, and the ISTD metric."""

from __future__ import annotations

import numpy as np
import torch
from comfy_api.latest import io, ui

from ..samplers.interpolation import interpolate_embeddings, interpolate_noises, istd
from .bridge.inversion import EdictLatent
from .bridge.record_plot import series_plot
from .edict import EDICT_LATENT
from .validation import NodeInputError, checks_inputs, require_conditioning

MAX_FRAMES = 256  # a client cannot ask for an arbitrarily large batch


class GivenNoise:
    """A NOISE whose samples are fixed tensors (the interpolated frames), for SamplerCustomAdvanced."""

    def __init__(self, noise: torch.Tensor, seed: int = 0, node: str = "Smooth Interpolate (Guidance Lab)"):
        self.noise = noise
        self.seed = seed
        self.node = node

    def generate_noise(self, input_latent):
        samples = input_latent["samples"]
        # The sampler may have turned an empty latent into the model's channel count
        # (fix_empty_latent_channels), or been given another latent than this node's.
        if tuple(samples.shape) != tuple(self.noise.shape):
            raise NodeInputError(self.node, "latent_image", f"made noise of shape {tuple(self.noise.shape)}, but the "
                                 f"sampler's latent has shape {tuple(samples.shape)}: give latent_image an empty "
                                 "latent of the sampled model (its channels and size) and sample this node's "
                                 "latent output")
        return self.noise.to(samples.device, samples.dtype)


def frames_input() -> io.Int.Input:
    return io.Int.Input("frames", default=16, min=2, max=MAX_FRAMES, tooltip="Number of frames, both ends included.")


def _interpolated_conditioning(node: str, positive_a, positive_b, frames: int) -> list:
    """lerp of the two prompts' embeddings (and pooled outputs), one row per frame."""
    (ta, oa), (tb, ob) = _embedding_pair(node, positive_a, positive_b)
    options = dict(oa)
    if isinstance(oa.get("pooled_output"), torch.Tensor) and isinstance(ob.get("pooled_output"), torch.Tensor):
        options["pooled_output"] = interpolate_embeddings(oa["pooled_output"], ob["pooled_output"], frames)
    return [[interpolate_embeddings(ta, tb, frames), options]]


def _embedding_pair(node: str, a, b):
    """The first [tensor, options] entry of each conditioning, checked to interpolate."""
    require_conditioning(node, "positive_a", a)
    require_conditioning(node, "positive_b", b)
    for name, cond in (("positive_a", a), ("positive_b", b)):
        if len(cond) != 1:
            raise NodeInputError(node, name, f"holds {len(cond)} prompts (a combined or area conditioning); "
                                 "interpolation takes one prompt per end: encode each end as one prompt")
    (ta, oa), (tb, ob) = a[0], b[0]
    if ta.shape != tb.shape:
        raise NodeInputError(node, "positive_b", f"has shape {tuple(tb.shape)}, positive_a {tuple(ta.shape)}: "
                             "encode both prompts with the same text encoder")
    return (ta, oa), (tb, ob)


class SmoothInterpolateNode(io.ComfyNode):
    DISPLAY = "Smooth Interpolate (Guidance Lab)"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GuidanceLab_SmoothInterpolate",
            display_name=cls.DISPLAY,
            category="Guidance Lab/smooth diffusion",
            description="Frames between two images' starting noises and prompts (Smooth Diffusion, Guo et "
                        "al. 2024): slerp on the noise, lerp on the text embedding. Sample the frames with "
                        "SamplerCustomAdvanced (noise -> noise, latent -> latent_image, conditioning -> "
                        "the guider's positive); measure them with the ISTD node.",
            inputs=[
                io.Noise.Input("noise_a", tooltip="Starting noise of the first image (e.g. RandomNoise)."),
                io.Noise.Input("noise_b", tooltip="Starting noise of the last image."),
                io.Latent.Input("latent_image", tooltip="Gives the size of one frame (e.g. an empty latent, "
                                                        "batch 1)."),
                io.Conditioning.Input("positive_a", tooltip="Prompt of the first image."),
                io.Conditioning.Input("positive_b", tooltip="Prompt of the last image (may equal positive_a)."),
                frames_input(),
            ],
            outputs=[
                io.Noise.Output(display_name="noise", tooltip="The interpolated noises, one per frame."),
                io.Latent.Output(display_name="latent", tooltip="An empty latent batch of the frames."),
                io.Conditioning.Output(display_name="conditioning",
                                       tooltip="The interpolated prompt, one row per frame."),
            ],
        )

    @classmethod
    @checks_inputs
    def execute(cls, noise_a, noise_b, latent_image, positive_a, positive_b, frames) -> io.NodeOutput:
        samples = latent_image["samples"][:1]
        a = noise_a.generate_noise({"samples": samples})
        b = noise_b.generate_noise({"samples": samples})
        noises = interpolate_noises(a, b, frames)
        conditioning = _interpolated_conditioning(cls.DISPLAY, positive_a, positive_b, frames)
        latent = {"samples": torch.zeros((frames,) + tuple(samples.shape[1:]), dtype=samples.dtype)}
        return io.NodeOutput(GivenNoise(noises, node=cls.DISPLAY), latent, conditioning)


class EdictInterpolateNode(io.ComfyNode):
    DISPLAY = "EDICT Interpolate (Guidance Lab)"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GuidanceLab_EDICTInterpolate",
            display_name=cls.DISPLAY,
            category="Guidance Lab/smooth diffusion",
            description="Frames between two inverted images (Smooth Diffusion's image interpolation): slerp "
                        "on both EDICT sequences, lerp on the prompts. Sample the result with EDICT Sample "
                        "(its positive = this node's conditioning); the first and last frames are then the "
                        "two source images, exactly.",
            inputs=[
                EDICT_LATENT.Input("edict_latent_a", tooltip="EDICT Invert of the first image."),
                EDICT_LATENT.Input("edict_latent_b", tooltip="EDICT Invert of the last image, made with the same "
                                                             "model, schedule, mixing weight and size."),
                io.Conditioning.Input("positive_a", tooltip="The prompt the first image was inverted with."),
                io.Conditioning.Input("positive_b", tooltip="The prompt the last image was inverted with."),
                frames_input(),
            ],
            outputs=[
                EDICT_LATENT.Output(display_name="edict_latent", tooltip="The frames' coupled pairs, for EDICT "
                                                                         "Sample."),
                io.Conditioning.Output(display_name="conditioning",
                                       tooltip="The interpolated prompt, one row per frame: EDICT Sample's "
                                               "positive."),
            ],
        )

    @classmethod
    @checks_inputs
    def execute(cls, edict_latent_a, edict_latent_b, positive_a, positive_b, frames) -> io.NodeOutput:
        node = cls.DISPLAY
        for name, latent in (("edict_latent_a", edict_latent_a), ("edict_latent_b", edict_latent_b)):
            if not isinstance(latent, EdictLatent):
                raise NodeInputError(node, name, f"is {type(latent).__name__}, not an EDICT latent; connect "
                                                 "EDICT Invert's edict_latent output")
        a, b = edict_latent_a, edict_latent_b
        if a.shape[0] != 1:
            raise NodeInputError(node, "edict_latent_a", f"holds a batch of {a.shape[0]}; invert one image each")
        problem = b.mismatch(list(a.sigmas), a.p, a.model_fingerprint, a.shape[1] if len(a.shape) > 1 else 0)
        if problem is None and (b.shape != a.shape or b.x.dtype != a.x.dtype):
            problem = (f"holds shape {b.shape} ({b.x.dtype}), edict_latent_a {a.shape} ({a.x.dtype}); invert "
                       "both images at the same size and precision")
        if problem:
            raise NodeInputError(node, "edict_latent_b", problem.replace("input 'sigmas'", "edict_latent_a")
                                 .replace("input 'mixing_weight'", "edict_latent_a's"))
        conditioning = _interpolated_conditioning(node, positive_a, positive_b, frames)
        x, y = interpolate_noises(a.x, b.x, frames), interpolate_noises(a.y, b.y, frames)
        shape = (frames,) + tuple(a.shape[1:])
        # Sampled one frame at a time, the batch size the sources were inverted at: the ends then
        # come back exactly (see EdictLatent.sample_batch).
        edict = EdictLatent(x, y, a.sigmas, a.schedule, a.p, a.model_fingerprint, shape, a.family,
                            f"interpolation of {a.guidance} and {b.guidance}", sample_batch=1)
        return io.NodeOutput(edict, conditioning)


class SmoothnessNode(io.ComfyNode):
    DISPLAY = "Interpolation Smoothness ISTD (Guidance Lab)"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GuidanceLab_InterpolationSmoothness",
            display_name=cls.DISPLAY,
            category="Guidance Lab/smooth diffusion",
            description="ISTD (Smooth Diffusion): the standard deviation of the perceptual distances "
                        "between adjacent frames (lower = smoother), their mean, and a plot of them. The "
                        "distance is multi-scale 1 - SSIM, a stand-in for LPIPS (no network weights offline).",
            inputs=[io.Image.Input("frames", tooltip="The frames of one interpolation, in order (an IMAGE "
                                                     "batch, e.g. VAEDecode of the sampled frames).")],
            outputs=[
                io.Float.Output(display_name="istd", tooltip="Std of the adjacent-frame distances."),
                io.Float.Output(display_name="mean_distance", tooltip="Mean adjacent-frame distance."),
                io.Image.Output(display_name="plot", tooltip="The distance of every adjacent pair."),
            ],
        )

    @classmethod
    def execute(cls, frames) -> io.NodeOutput:
        if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[-1] not in (1, 3, 4):
            raise NodeInputError(cls.DISPLAY, "frames", "is not an IMAGE batch; connect a VAEDecode output")
        if frames.shape[0] < 2:
            raise NodeInputError(cls.DISPLAY, "frames", f"holds {frames.shape[0]} frame; ISTD needs at least 2")
        if frames.shape[0] > MAX_FRAMES:
            raise NodeInputError(cls.DISPLAY, "frames", f"holds {frames.shape[0]} frames; at most {MAX_FRAMES}")
        if min(frames.shape[1:3]) < 3:
            raise NodeInputError(cls.DISPLAY, "frames", f"are {frames.shape[2]}x{frames.shape[1]} pixels; the "
                                 "structural distance needs at least 3x3")
        std, mean, distances = istd(frames[..., :3].movedim(-1, 1))  # a view: istd works a few pairs at a time
        report = f"ISTD {std:.4f}, mean adjacent distance {mean:.4f} over {frames.shape[0]} frames"
        plot = series_plot(report, "1 - SSIM (multi-scale) between frame k and k+1", distances.tolist())
        image = torch.from_numpy(np.asarray(plot, dtype=np.float32) / 255.0)[None]
        return io.NodeOutput(std, mean, image, ui=ui.PreviewText(report))
