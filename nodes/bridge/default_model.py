"""The pack's default model as ComfyUI objects: MODEL, CLIP and VAE from one safetensors file.

A pixel-space text-to-image model for 32x32 RGB (see ``default_model/README.md``):

- MODEL: one of ComfyUI's own networks, named by the file's ``architecture``: ``unet``,
  the ``UNetModel`` (openaimodel) in a ``BaseModel``; or ``flux``, the Flux DiT
  (``comfy.ldm.flux``: double- and single-stream blocks, joint attention to the text at
  every block, the pooled text vector in the modulation) in ComfyUI's ``model_base.Flux``.
  The model type and schedule come from the file (eps / v-prediction on the discrete SD
  schedule, or rectified flow on CONST); latent format ``ChromaRadiance`` (3 channels,
  identity scaling: the latent is the image in [-1, 1]);
- CLIP: ComfyUI's SD1 tokenizer and a small ``SDClipModel`` (``CLIPTextModel``);
- VAE: ComfyUI's pixel-space VAE (``comfy.sd.VAE(sd={"pixel_space_vae": ...})``, the
  stock ``VAELoader``'s "pixel_space"), image [0, 1] <-> latent [-1, 1].

The file holds ``diffusion_model.*`` and ``text_encoder.*`` tensors and, in its metadata,
the two configs as JSON. The text encoder's 49408-row token table is not stored whole:
only the rows of the tokens seen in training (``text_encoder.token_ids`` /
``text_encoder.token_rows``); every other row is drawn from a seeded normal at load,
exactly as it was initialised (and left untouched) in training.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models_base

from . import compat

FORMAT = "guidance_lab_shapes32/1"
TOKEN_TABLE_STD = 0.02
TOKEN_TABLE_KEY = "transformer.text_model.embeddings.token_embedding.weight"

DEFAULT_UNET_CONFIG = {
    "image_size": 32, "in_channels": 3, "out_channels": 3, "model_channels": 32,
    "num_res_blocks": 2, "channel_mult": [1, 2, 2],
    # One transformer level: the 8x8 one (and the middle block).
    "transformer_depth": [0, 0, 0, 0, 1, 1], "transformer_depth_middle": 1,
    "transformer_depth_output": [0, 0, 0, 0, 0, 0, 1, 1, 1],
    "num_head_channels": 32, "num_heads": -1, "context_dim": 64,
    "use_spatial_transformer": True, "use_linear_in_transformer": True, "legacy": False,
    "adm_in_channels": None, "use_temporal_attention": False, "use_temporal_resblock": False,
}
# The DiT default model: Flux's network at 32x32 RGB, patch 2 (256 image tokens beside the 77
# text tokens), width 128, 4 heads of 32 (rotary axes: index, row, column), 3 double-stream
# and 6 single-stream blocks; the pooled text vector (width 64) feeds the modulation.
DEFAULT_FLUX_CONFIG = {
    "in_channels": 3, "out_channels": 3, "vec_in_dim": 64, "context_in_dim": 64, "hidden_size": 128,
    "mlp_ratio": 4.0, "num_heads": 4, "depth": 3, "depth_single_blocks": 6, "axes_dim": [4, 14, 14],
    "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": False,
}
ARCHITECTURES = ("unet", "flux")
DEFAULT_TEXT_CONFIG = {
    "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 256,
    "hidden_act": "gelu", "max_position_embeddings": 77, "vocab_size": 49408,
    "bos_token_id": 49406, "eos_token_id": 49407, "token_table_seed": 0,
}


class WeightsError(ValueError):
    """The weights file cannot be used; the message says why."""


# ---------------------------------------------------------------- the networks

def seeded_token_table(config: dict) -> torch.Tensor:
    """The token table every row not stored in the file comes from (CPU generator: stable)."""
    gen = torch.Generator().manual_seed(int(config["token_table_seed"]))
    return torch.randn(config["vocab_size"], config["hidden_size"], generator=gen) * TOKEN_TABLE_STD


def _clip_config(text_config: dict) -> dict:
    return {k: v for k, v in text_config.items() if k != "token_table_seed"}


def text_encoder_class(text_config: dict):
    """An SD1ClipModel-shaped class (its ``clip_l`` is the small SDClipModel)."""
    config = _clip_config(text_config)

    class ShapesClipL(comfy.sd1_clip.SDClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}):
            super().__init__(device=device, dtype=dtype, model_options=model_options,
                             textmodel_json_config=dict(config), layer="last",
                             return_projected_pooled=False)

    class ShapesTextEncoder(comfy.sd1_clip.SD1ClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}, **kwargs):
            super().__init__(device=device, dtype=dtype, model_options=model_options,
                             clip_name="l", clip_model=ShapesClipL, **kwargs)

    return ShapesTextEncoder


class ShapesTokenizer(comfy.sd1_clip.SD1Tokenizer):
    """ComfyUI's SD1 (CLIP BPE) tokenizer, shipped with ComfyUI."""

    def __init__(self, embedding_directory=None, tokenizer_data={}):
        super().__init__(embedding_directory=embedding_directory, tokenizer_data=tokenizer_data)


class Shapes32(comfy.supported_models_base.BASE):
    unet_config = {}
    unet_extra_config = {}
    latent_format = comfy.latent_formats.ChromaRadiance
    memory_usage_factor = 0.1
    supported_inference_dtypes = [torch.float32]

    def clip_target(self, state_dict={}):
        return None


def comfy_unet_config(unet_config: dict) -> dict:
    """The UNet config as ComfyUI's model detection writes it: ``num_res_blocks`` one entry per
    level. UNetModel builds the same network from an int, but ComfyUI's LoRA key map
    (``comfy.utils.unet_to_diffusers``, used by every LoRA loader) indexes it per level."""
    config = dict(unet_config)
    if isinstance(config.get("num_res_blocks"), int):
        config["num_res_blocks"] = [config["num_res_blocks"]] * len(config["channel_mult"])
    return config


def build_unet(unet_config: dict, operations=comfy.ops.disable_weight_init):
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    return UNetModel(**unet_config, dtype=torch.float32, device="cpu", operations=operations)


def build_flux(config: dict, operations=comfy.ops.disable_weight_init):
    from comfy.ldm.flux.model import Flux

    return Flux(**compat.flux_network_kwargs(config), dtype=torch.float32, device="cpu", operations=operations)


def build_network(architecture: str, config: dict, operations=comfy.ops.disable_weight_init):
    """The denoising network a default-model file's ``architecture`` names."""
    if architecture == "flux":
        return build_flux(config, operations)
    return build_unet(config, operations)


def build_text_encoder(text_config: dict, operations=None):
    """The text encoder module (an SD1ClipModel); ``operations`` None = ComfyUI's default."""
    options = {} if operations is None else {"custom_operations": operations}
    return text_encoder_class(text_config)(device="cpu", dtype=torch.float32, model_options=options)


# ---------------------------------------------------------------- the file

def _fail(node: str, input_name: str, path, why: str) -> WeightsError:
    prefix = f"{node}: input '{input_name}' names " if node else ""
    return WeightsError(f"{prefix}{path}, which is not a usable Guidance Lab default-model file: {why}")


def read_weights(path, node: str = "", input_name: str = "weights"):
    """(tensors, metadata) of a weights file; WeightsError naming node/input when unusable."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise _fail(node, input_name, path, "no such file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as error:  # safetensors raises its own types for truncated/garbled files
        raise _fail(node, input_name, path, f"cannot read it as safetensors ({error}); it may be "
                    "truncated or corrupted, re-export it with tools/training/train.py --export") from None
    if metadata.get("format") != FORMAT:
        raise _fail(node, input_name, path, f"metadata 'format' is {metadata.get('format')!r}, "
                    f"expected {FORMAT!r}")
    if metadata.get("architecture") not in ARCHITECTURES:
        raise _fail(node, input_name, path, f"metadata 'architecture' is {metadata.get('architecture')!r}, "
                    f"expected one of {list(ARCHITECTURES)}")
    try:
        metadata["unet_config"] = json.loads(metadata["unet_config"])
        metadata["text_config"] = json.loads(metadata["text_config"])
        metadata["sampling_settings"] = json.loads(metadata.get("sampling_settings", "{}"))
    except (KeyError, ValueError) as error:
        raise _fail(node, input_name, path, f"metadata lacks a valid model config ({error})") from None
    for key in ("unet_config", "text_config", "sampling_settings"):
        if not isinstance(metadata[key], dict):
            raise _fail(node, input_name, path, f"metadata '{key}' is not a JSON object")
    return tensors, metadata


# prediction -> (family, ComfyUI model type, sampling settings the schedule needs)
PREDICTIONS = {
    "eps": ("eps", "EPS", ("beta_schedule",)),
    "v": ("eps", "V_PREDICTION", ("beta_schedule",)),
    "flow": ("flow", "FLOW", ("shift", "multiplier")),
}


def model_type_of(metadata: dict, node: str, input_name: str, path):
    """The ComfyUI model type a file's metadata declares, checked against its family and schedule.

    ``family`` ("eps" for eps/v-prediction on the discrete schedule, "flow" for rectified
    flow on ComfyUI's CONST sampling) must agree with ``prediction`` and with the recorded
    sampling settings: a file that mislabels its family would sample with the wrong
    schedule and give noise, so it is refused instead."""
    prediction = metadata.get("prediction", "eps")
    if prediction not in PREDICTIONS:
        raise _fail(node, input_name, path, f"metadata 'prediction' is {prediction!r}; expected one of "
                    f"{sorted(PREDICTIONS)}")
    family, type_name, needed = PREDICTIONS[prediction]
    declared = metadata.get("family")
    if declared != family:
        raise _fail(node, input_name, path, f"metadata 'family' is {declared!r}, but a {prediction!r}-prediction "
                    f"model belongs to the {family!r} family; re-export it with tools/training/train.py --export")
    missing = [k for k in needed if k not in metadata["sampling_settings"]]
    if missing:
        raise _fail(node, input_name, path, f"its sampling_settings lack {missing} for the {family!r} family")
    return getattr(comfy.model_base.ModelType, type_name)


def _load_strict(module, sd, what, node, input_name, path):
    try:
        result = module.load_state_dict(sd, strict=False)
    except RuntimeError as error:  # a tensor whose shape does not fit the config
        raise _fail(node, input_name, path, f"{what} weights do not fit the config ({error})") from None
    missing = list(getattr(result, "missing_keys", []))
    unexpected = list(getattr(result, "unexpected_keys", []))
    if missing or unexpected:
        raise _fail(node, input_name, path, f"{what} weights do not fit the config "
                    f"(missing {missing[:3]}..., unexpected {unexpected[:3]}...)")
    for k, v in module.state_dict().items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise _fail(node, input_name, path, f"{what} tensor {k} holds non-finite values")


def load_default_model(path, node: str = "", input_name: str = "weights"):
    """(MODEL, CLIP, VAE, metadata) from a weights file written by tools/training/train.py."""
    tensors, metadata = read_weights(path, node, input_name)
    unet_config, text_config = metadata["unet_config"], metadata["text_config"]
    try:
        unet_sd = {k[len("diffusion_model."):]: v.float() for k, v in tensors.items()
                   if k.startswith("diffusion_model.")}
        text_sd = {k[len("text_encoder."):]: v for k, v in tensors.items() if k.startswith("text_encoder.")}
        token_ids = text_sd.pop("token_ids").long()
        token_rows = text_sd.pop("token_rows").float()
        table = seeded_token_table(text_config)
        if token_ids.numel() and (token_ids.min() < 0 or token_ids.max() >= table.shape[0]):
            raise IndexError(f"token ids outside the vocabulary [0, {table.shape[0]})")
        table[token_ids] = token_rows
        text_sd = {k: v.float() for k, v in text_sd.items()}
        text_sd[TOKEN_TABLE_KEY] = table
    except (KeyError, IndexError, RuntimeError, TypeError, ValueError) as error:
        raise _fail(node, input_name, path, f"missing or malformed tensors or text_config ({error})") from None

    device = comfy.model_management.get_torch_device()
    offload = comfy.model_management.unet_offload_device()
    architecture = metadata["architecture"]
    model_type = model_type_of(metadata, node, input_name, path)
    try:
        if architecture == "flux":
            network_config = compat.flux_network_kwargs(unet_config)
            model_class = comfy.model_base.Flux
        else:
            network_config = comfy_unet_config(unet_config)
            model_class = comfy.model_base.BaseModel
        model_config = Shapes32({**network_config, "dtype": torch.float32})
        model_config.set_inference_dtype(torch.float32, None)
        model_config.sampling_settings = metadata.get("sampling_settings", {})
        base = model_class(model_config, model_type=model_type, device=offload)
    except Exception as error:
        raise _fail(node, input_name, path, f"its unet_config does not build a {architecture} network "
                    f"({error})") from None
    if architecture == "flux":
        unet_sd = compat.flux_state_dict_for(base.diffusion_model, unet_sd)
    _load_strict(base.diffusion_model, unet_sd, architecture, node, input_name, path)
    model = comfy.model_patcher.ModelPatcher(base, load_device=device, offload_device=offload)

    try:
        target = comfy.supported_models_base.ClipTarget(ShapesTokenizer, text_encoder_class(text_config))
        # fp32: the encoder is tiny, and fp16 on the CPU would round it away from how it was trained.
        clip = comfy.sd.CLIP(target=target, parameters=sum(v.numel() for v in text_sd.values()),
                             model_options={"dtype": torch.float32})
    except Exception as error:
        raise _fail(node, input_name, path, f"its text_config does not build a text encoder ({error})") from None
    _load_strict(clip.cond_stage_model.clip_l, text_sd, "text encoder", node, input_name, path)

    vae = comfy.sd.VAE(sd={"pixel_space_vae": torch.tensor(1.0)})
    return model, clip, vae, metadata
