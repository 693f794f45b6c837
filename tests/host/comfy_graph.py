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


def count_model_calls(model):
    """The model with a forward wrapper that logs (sigma, batch) of every UNet call: an
    evaluation counter that knows nothing of the guider."""
    calls = []
    m = model.clone()

    def wrapper(apply_model, args):
        calls.append((float(args["timestep"].reshape(-1)[0]), int(args["input"].shape[0])))
        return apply_model(args["input"], args["timestep"], **args["c"])

    m.set_model_unet_function_wrapper(wrapper)
    return m, calls


def schedule(model, steps: int, scheduler="normal") -> list:
    from comfy_extras import nodes_custom_sampler as cs

    return node_out(cs.BasicScheduler.execute(model, scheduler, steps, 1.0))[0].tolist()


def book_by_sigma(sigmas: list, called: list) -> list:
    """The schedule step of each model call from its sigma and the order of the calls alone.

    A sigma strictly inside (s_{i+1}, s_i) is step i. Calls at a schedule sigma s_j (1e-4
    relative) come in runs: the last call of a run starts step j, the earlier ones end step
    j - 1 (Heun's corrector at s_{i+1}; the eta = 1 midpoint of the ancestral DPM samplers,
    s_{i+1} up to rounding). Holds for samplers that evaluate each step at its own sigma
    first and never look beyond s_{i+1} (not heunpp2, not SA-Solver's PECE)."""
    n = len(sigmas) - 1

    def at(sigma):
        return next((j for j, s in enumerate(sigmas) if abs(sigma - s) <= 1e-4 * max(s, 1e-8)), None)

    steps = []
    for k, sigma in enumerate(called):
        j = at(sigma)
        if j is None:
            steps.append(max(i for i in range(n) if sigmas[i] > sigma))
        else:
            starts = k + 1 == len(called) or at(called[k + 1]) != j
            steps.append(min(j if starts else j - 1, n - 1))
    return steps


def nfe_by_step(steps: list, calls: list, total_steps: int, batch: int) -> list:
    """NFE per image of each schedule step, from booked calls [(sigma, model batch)]."""
    nfe = [0.0] * total_steps
    for step, (_, size) in zip(steps, calls):
        nfe[step] += size / batch
    return nfe
