"""Run ComfyUI's own node classes in-process, the way the executor would."""

from __future__ import annotations

import torch


def node_out(result):
    """The outputs of a V1 node (a tuple) or a V3 node (NodeOutput)."""
    return tuple(result.args) if hasattr(result, "args") else tuple(result)


def load_checkpoint(path):
    import nodes

    model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(path.name)[:3]
    return model, clip, vae


def load_checkpoint_file(path):
    import comfy.sd

    model, clip, vae = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True)[:3]
    return model, clip, vae


def encode(clip, text):
    import nodes

    return nodes.CLIPTextEncode().encode(clip, text)[0]


def with_family(model, family: str):
    """The fixture model patched to eps (as loaded), v-prediction or flow (CONST) sampling."""
    from comfy_extras import nodes_model_advanced as adv

    if family == "eps":
        return model
    if family == "v":
        return adv.ModelSamplingDiscrete().patch(model, "v_prediction", False)[0]
    if family == "flow":
        return adv.ModelSamplingSD3().patch(model, 3.0)[0]
    raise ValueError(family)


def sample(guider, sampler_name: str, steps: int, latent: dict, seed: int, scheduler="normal", sampler=None):
    """SamplerCustomAdvanced with RandomNoise, KSamplerSelect and BasicScheduler."""
    from comfy_extras import nodes_custom_sampler as cs

    noise = node_out(cs.RandomNoise.execute(seed))[0]
    if sampler is None:
        sampler = node_out(cs.KSamplerSelect.execute(sampler_name))[0]
    sigmas = node_out(cs.BasicScheduler.execute(guider.model_patcher, scheduler, steps, 1.0))[0]
    out = node_out(cs.SamplerCustomAdvanced.execute(noise, guider, sampler, sigmas, latent))
    return out[0]["samples"]


def empty_latent(batch: int, size: int = 64) -> dict:
    return {"samples": torch.zeros(batch, 4, size // 8, size // 8)}


def comfy_cfg(model, positive, negative, scale):
    """ComfyUI's own CFGGuider, the reference the pack is held to."""
    from comfy.samplers import CFGGuider

    guider = CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(scale)
    return guider
