"""Smooth Diffusion: the Smooth-LoRA loader (Guo et al., CVPR 2024)."""

from __future__ import annotations

import folder_paths
from comfy_api.latest import io, ui

from .bridge.files import file_stamp, find_model_file
from .bridge.lora import LoraFileError, apply_lora, plan_lora, takes_processor_layout
from .validation import NodeInputError, checks_inputs


def read_safetensors(node: str, input_name: str, path: str) -> dict:
    """All tensors of a safetensors file (never a pickle), or an error naming node and input."""
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except Exception as error:  # safetensors raises its own types for truncated or garbled files
        raise NodeInputError(node, input_name, f"names {path}, which cannot be read as safetensors "
                             f"({error}); it may be truncated or not a safetensors file") from None


class SmoothLoraLoaderNode(io.ComfyNode):
    DISPLAY = "Smooth-LoRA Loader (Guidance Lab)"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GuidanceLab_SmoothLoraLoader",
            display_name=cls.DISPLAY,
            category="Guidance Lab/smooth diffusion",
            description="Applies a Smooth-LoRA (Smooth Diffusion, Guo et al. 2024; diffusers attention-"
                        "processor layout, as released for SD1.5 or trained by the pack) to the model "
                        "through ComfyUI's own LoRA machinery, and reports how many layers it placed.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model the LoRA was trained for."),
                io.Combo.Input("lora_name", options=folder_paths.get_filename_list("loras"),
                               tooltip="A Smooth-LoRA .safetensors file in ComfyUI's loras folder."),
                io.Float.Input("strength", default=1.0, min=-4.0, max=4.0, step=0.05, round=0.001,
                               tooltip="Scale of the LoRA's update W + strength * up @ down; 1.0 is how "
                                       "it was trained, 0 leaves the model unchanged."),
            ],
            outputs=[
                io.Model.Output(tooltip="The model with the Smooth-LoRA applied (a patched clone)."),
                io.String.Output(display_name="report", tooltip="Layers applied, rank, and any the model lacks."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, lora_name=None, **_):
        return file_stamp(lambda: find_model_file(cls.DISPLAY, "lora_name", "loras", lora_name))

    @classmethod
    @checks_inputs
    def execute(cls, model, lora_name, strength) -> io.NodeOutput:
        path = find_model_file(cls.DISPLAY, "lora_name", "loras", lora_name)
        tensors = read_safetensors(cls.DISPLAY, "lora_name", str(path))
        if not takes_processor_layout(model):
            # Said of the model, not the file: a LoRA for this model's own layers is not "for
            # another architecture", the layout just has no place on it.
            raise NodeInputError(cls.DISPLAY, "model", f"is a {type(model.model).__name__} model, on which "
                                 "ComfyUI places no LoRA of the attention-processor layout (it maps those names "
                                 "onto SD1.x/SD2.x/SDXL UNets only), whatever model the LoRA was made for; load "
                                 "a LoRA for it with ComfyUI's LoraLoaderModelOnly in a key format ComfyUI reads")
        try:
            plan = plan_lora(model, tensors)
        except LoraFileError as error:
            raise NodeInputError(cls.DISPLAY, "lora_name", f"names {lora_name}: {error}") from None
        if not plan.placed:
            raise NodeInputError(cls.DISPLAY, "lora_name", f"names {lora_name}, whose {plan.layers} layers "
                                 f"match no weight of this model (e.g. {plan.unplaced[:2]}): a LoRA for "
                                 "another architecture")
        patched, applied = apply_lora(model, plan, strength)
        report = (f"{lora_name}: applied {applied} of {plan.layers} LoRA layers (rank {plan.rank}) at "
                  f"strength {strength:g}")
        if plan.unplaced:
            report += f"; not placed (the model lacks them): {', '.join(plan.unplaced)}"
        return io.NodeOutput(patched, report, ui=ui.PreviewText(report))
