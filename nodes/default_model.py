"""The pack's default model: a small pixel-space text-to-image model trained on procedural shapes."""

from __future__ import annotations

from comfy_api.latest import io

from ..default_model import DEFAULT_WEIGHTS, WEIGHTS_DIR
from .bridge.default_model import WeightsError, load_default_model
from .bridge.files import file_stamp, find_file
from .validation import NodeInputError, checks_inputs


def weight_files() -> list:
    names = sorted(p.name for p in WEIGHTS_DIR.glob("*.safetensors"))
    return names or [DEFAULT_WEIGHTS]


class DefaultModelLoaderNode(io.ComfyNode):
    DISPLAY = "Default Model Loader (Guidance Lab)"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GuidanceLab_DefaultModelLoader",
            display_name=cls.DISPLAY,
            category="Guidance Lab/loaders",
            description="The pack's own small text-to-image model (32x32 RGB, pixel space), trained on "
                        "prompts like 'a red circle on a white background'. Sample 32x32 latents "
                        "(e.g. EmptyChromaRadianceLatentImage) and decode with the VAE output.",
            inputs=[
                io.Combo.Input("weights", options=weight_files(), default=DEFAULT_WEIGHTS,
                               tooltip="Weights file in the pack's default_model/weights folder "
                                       "(written by tools/training/train.py --export)."),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="A small UNet in the family its file says: "
                                "flow (guidance_lab_flow32) or v-prediction on SD's discrete schedule "
                                "(guidance_lab_vpred32); works with every stock sampler and guider."),
                io.Clip.Output(display_name="CLIP", tooltip="Small text encoder for CLIPTextEncode "
                               "(ComfyUI's SD1 tokenizer)."),
                io.Vae.Output(display_name="VAE", tooltip="ComfyUI's pixel-space VAE: latents are "
                              "the image in [-1, 1]."),
            ],
        )

    @classmethod
    def weights_path(cls, weights):
        return find_file(cls.DISPLAY, "weights", weights, roots=[("the pack's weights folder", WEIGHTS_DIR)])

    @classmethod
    def fingerprint_inputs(cls, weights=None, **_):
        return file_stamp(lambda: cls.weights_path(weights))

    @classmethod
    @checks_inputs
    def execute(cls, weights) -> io.NodeOutput:
        path = cls.weights_path(weights)
        try:
            model, clip, vae, _meta = load_default_model(path)
        except WeightsError as error:
            raise NodeInputError(cls.DISPLAY, "weights", f"names {error}") from None
        return io.NodeOutput(model, clip, vae)
