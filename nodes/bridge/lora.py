"""Smooth-LoRA files (diffusers attention-processor layout) applied through ComfyUI's own LoRA
machinery: its key map places each layer, its LoRA adapter computes W + strength * up @ down.

The released Smooth-LoRA for SD1.5 stores, for every UNet attention projection, keys like
``down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight``
(and ``.up.weight``), with no ``alpha``: diffusers applies up @ down with scale 1.0, and so
does ComfyUI's adapter when no alpha is stored (checked by the tests on a file in this layout).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import comfy.lora
import torch

# <block path>.processor.<projection>_lora.<half>.weight
LAYOUT = re.compile(r"^(?:unet\.)?(?P<layer>.+\.attn[12])\.processor\.(?P<proj>to_q|to_k|to_v|to_out)"
                    r"_lora\.(?P<half>up|down)\.weight$")


class LoraFileError(ValueError):
    """The tensors are not a LoRA of the attention-processor layout; the message says why."""


@dataclass
class LoraPlan:
    """What a Smooth-LoRA file holds and where each layer lands in the model."""

    patches: dict  # ComfyUI patch dict: model key -> adapter
    layers: int  # up/down pairs in the file
    placed: list = field(default_factory=list)  # LoRA layer names placed on a model weight
    unplaced: list = field(default_factory=list)  # LoRA layer names the model has no weight for
    rank: int = 0


def lora_layers(tensors: dict) -> dict:
    """LoRA layer name (e.g. ``down_blocks.0...attn1.processor.to_q``) -> {"up": T, "down": T}."""
    layers, foreign = {}, []
    for key, value in tensors.items():
        match = LAYOUT.match(key)
        if match is None:
            foreign.append(key)
            continue
        name = f"{match['layer']}.processor.{match['proj']}"
        layers.setdefault(name, {})[match["half"]] = value
    if not layers:
        raise LoraFileError(f"none of its {len(tensors)} tensors is an attention-processor LoRA weight "
                            f"(expected keys like 'down_blocks.0.attentions.0.transformer_blocks.0.attn1."
                            f"processor.to_q_lora.down.weight'; found e.g. {sorted(tensors)[:3]})")
    if foreign:
        raise LoraFileError(f"it mixes attention-processor LoRA weights with {len(foreign)} other tensors "
                            f"(e.g. {foreign[:3]}); it is not a Smooth-LoRA file")
    for name, halves in layers.items():
        if set(halves) != {"up", "down"}:
            raise LoraFileError(f"layer {name} lacks its {'up' if 'up' not in halves else 'down'} weight")
        up, down = halves["up"], halves["down"]
        if up.ndim != 2 or down.ndim != 2 or up.shape[1] != down.shape[0]:
            raise LoraFileError(f"layer {name} has up {tuple(up.shape)} and down {tuple(down.shape)}, "
                                "which do not multiply to a projection weight")
        if not (torch.isfinite(up).all() and torch.isfinite(down).all()):
            raise LoraFileError(f"layer {name} holds non-finite values")
    return layers


def takes_processor_layout(model) -> bool:
    """Whether ComfyUI's LoRA key map places diffusers' attention-processor names on this model:
    it does for UNets (SD1.x, SD2.x, SDXL), not for transformer models (Wan, Flux, SD3 ...),
    whatever attention layers those have."""
    return any(".processor.to_" in key for key in comfy.lora.model_lora_keys_unet(model.model, {}))


def plan_lora(model, tensors: dict) -> LoraPlan:
    """Place every layer of a Smooth-LoRA file on the model with ComfyUI's key map and adapter."""
    layers = lora_layers(tensors)
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    weights = model.model.state_dict()
    # ComfyUI's key map names a diffusers layer without the ".0" of to_out.0.
    placed, unplaced, to_load = [], [], {}
    for name, halves in sorted(layers.items()):
        target = key_map.get(name)
        if target is None:
            unplaced.append(name)
            continue
        expected = (halves["up"].shape[0], halves["down"].shape[1])
        shape = tuple(weights[target].shape[:2]) if target in weights else None
        if shape != expected:
            raise LoraFileError(f"layer {name} is {expected[0]}x{expected[1]}, but the model's {target} is "
                                f"{shape}: it is a LoRA for another architecture")
        placed.append(name)
        to_load[name] = target
    patches = comfy.lora.load_lora(tensors, to_load, log_missing=False)
    ranks = {halves["down"].shape[0] for halves in layers.values()}
    return LoraPlan(patches, len(layers), placed, unplaced, max(ranks))


def apply_lora(model, plan: LoraPlan, strength: float):
    """A clone of the MODEL with the LoRA's patches at ``strength`` (the base weights stay untouched)."""
    patched = model.clone()
    applied = patched.add_patches(plan.patches, float(strength))
    return patched, len(applied)
