"""The one seam between the pack and ComfyUI's internals that change between releases.

Every difference between the ComfyUI versions the pack is tested on (0.3.75 and 0.33.x) is
handled here and nowhere else, so an update that moves an internal is fixed in one place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect


def flux_network_kwargs(config: dict) -> dict:
    """Keyword arguments for this host's ``comfy.ldm.flux.model.Flux`` from a Flux config.

    0.33 added ``txt_ids_dims`` as a required field (``[]`` keeps Flux.1's all-zero text
    positions); 0.3.75 refuses it. Fields this host does not know are refused by name so a
    file made for a newer Flux variant is not silently built as another network."""
    from comfy.ldm.flux.model import FluxParams

    fields = {f.name: f for f in dataclasses.fields(FluxParams)}
    kwargs = dict(config)
    if "txt_ids_dims" in fields:
        kwargs.setdefault("txt_ids_dims", [])
    elif kwargs.get("txt_ids_dims", []) == []:
        kwargs.pop("txt_ids_dims", None)
    unknown = sorted(k for k in kwargs if k not in fields and k != "image_model")
    if unknown:
        raise ValueError(f"this ComfyUI's Flux has no setting(s) {unknown}")
    return kwargs


# Flux's q/k RMSNorm gain: ``scale`` in 0.3.75 (and in BFL's files), ``weight`` in 0.33 (where
# QKNorm became ComfyUI's ops.RMSNorm). Files keep BFL's name; each host gets its own.
_FLUX_NORM_GAIN = ("_norm.scale", "_norm.weight")


def flux_state_dict_for(network, state_dict: dict) -> dict:
    """A Flux state dict in the parameter names of this host's ``network``."""
    expected = set(network.state_dict())
    out = {}
    for key, value in state_dict.items():
        if key not in expected:
            for old, new in (_FLUX_NORM_GAIN, _FLUX_NORM_GAIN[::-1]):
                if key.endswith(old) and key[: -len(old)] + new in expected:
                    key = key[: -len(old)] + new
                    break
        out[key] = value
    return out


def flux_state_dict_canonical(state_dict: dict) -> dict:
    """A Flux state dict in BFL's names (what the pack writes to files, on every host)."""
    old, new = _FLUX_NORM_GAIN[1], _FLUX_NORM_GAIN[0]
    return {(k[: -len(old)] + new if k.endswith(old) else k): v for k, v in state_dict.items()}


def copy_network(base_model):
    """A deep copy of a ``comfy.model_base.BaseModel`` (weights and all) that shares its model
    config with the original.

    Since upstream 092ee8a5 (0.4 and later) ``comfy.supported_models_base.BASE`` answers every
    missing attribute with None, so ``copy.deepcopy`` finds ``__setstate__ = None`` on the config
    and calls it ("'NoneType' object is not callable"). The config is read-only metadata
    (unet_config, latent_format, sampling settings), so the copy shares it on every host."""
    import copy

    memo = {}
    config = getattr(base_model, "model_config", None)
    if config is not None:
        memo[id(config)] = config
    return copy.deepcopy(base_model, memo)


def ancestral_noise_sampler(x, seed):
    """The host's own noise source for ancestral steps on ``x``: ``noise(sigma, sigma_next)``.

    0.33 (upstream 1e4e342f) seeds the CPU generator with seed + 1, so the step noise no longer
    repeats the initial noise drawn from the same seed on the CPU; 0.3.75 seeds it with the
    seed. Taking the host's function keeps the pack's ancestral CFG++ sampler equal to core's
    sampler of the same name on each host, as a user switching between them expects."""
    from comfy.k_diffusion.sampling import default_noise_sampler

    return default_noise_sampler(x, seed=seed)


def fix_empty_latent(model, latent: dict):
    """A LATENT's samples as the model takes them, as the host's own samplers prepare them.

    0.33's ``fix_empty_latent_channels`` also resizes an empty latent made for another
    downscale ratio (the LATENT's ``downscale_ratio_spacial`` / ``_temporal``); 0.3.75's takes
    the model and the samples only."""
    import comfy.sample

    fix = comfy.sample.fix_empty_latent_channels
    if "downscale_ratio_spacial" in inspect.signature(fix).parameters:
        return fix(model, latent["samples"], latent.get("downscale_ratio_spacial"),
                   latent.get("downscale_ratio_temporal"))
    return fix(model, latent["samples"])


def ksampler(fn, extra_options: dict | None = None):
    """``comfy.samplers.KSAMPLER`` over one of the pack's sampler functions.

    ``KSAMPLER.sample`` calls ``fn(model, x, sigmas, extra_args=, callback=, disable=,
    **extra_options)``; hosts add arguments over time (0.33 added ``latent_shapes`` to the
    guider's methods), so any other keyword a host passes is dropped rather than failing the
    run. A wrong extra option of the pack's own still fails. ``functools.wraps`` keeps the
    function's name, module, attributes (``evaluations_per_step``) and signature, which
    calibration files and the NFE plan read."""
    import comfy.samplers

    @functools.wraps(fn)
    def sample(model, x, sigmas, *args, **kwargs):
        known = {"extra_args", "callback", "disable", *wrapped.extra_options}
        return fn(model, x, sigmas, *args, **{k: v for k, v in kwargs.items() if k in known})

    wrapped = comfy.samplers.KSAMPLER(sample, extra_options=dict(extra_options or {}))
    return wrapped


@contextlib.contextmanager
def training_mode():
    """Backpropagation through the host's networks, as ComfyUI's own trainer runs it.

    0.33's Flux-family attention applies RoPE through a fused kernel (comfy_kitchen) that has no
    backward; its networks take the differentiable path while ``comfy.model_management.in_training``
    is set, which is how ComfyUI's TrainLoraNode trains (set for its loop, reset in ``finally``).
    The pack sets it the same way, for the AGD training loop only, and puts back what was there.
    0.3.75 has no such flag (its kernels are all differentiable): nothing to do. The flag is
    read by name because only newer hosts define it."""
    import comfy.model_management as mm

    flag = "in_training"
    if not hasattr(mm, flag):
        yield
        return
    before = getattr(mm, flag)
    setattr(mm, flag, True)
    try:
        yield
    finally:
        setattr(mm, flag, before)


def intermediate_dtype(fallback: torch.dtype) -> torch.dtype:
    """The dtype ComfyUI hands sampled latents on in: 0.33 casts them (``--fp16-intermediates``
    gives float16); 0.3.75 keeps the sampler's dtype, ``fallback``. Read by name because only
    newer hosts define it."""
    import comfy.model_management as mm

    name = "intermediate_dtype"
    return getattr(mm, name)() if hasattr(mm, name) else fallback
