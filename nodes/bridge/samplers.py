"""The pack's samplers as ComfyUI SAMPLER objects."""

from __future__ import annotations

import comfy.model_sampling
import comfy.samplers

from ...samplers import REGISTRY


def model_family(model_sampling) -> str:
    """The core's name for how a model mixes x0 and noise: "flow" for CONST, else "eps"."""
    return "flow" if isinstance(model_sampling, comfy.model_sampling.CONST) else "eps"


def _with_family(fn):
    """Tell a family-aware core sampler which family the guider's model belongs to."""

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        sampling = model.inner_model.model_patcher.get_model_object("model_sampling")
        return fn(model, x, sigmas, extra_args, callback, disable, family=model_family(sampling), **options)

    sample.__name__ = fn.__name__
    return sample


def pack_sampler(name: str, **options) -> comfy.samplers.KSAMPLER:
    if name not in REGISTRY:
        raise ValueError(f"unknown Guidance Lab sampler {name!r}; choose one of {sorted(REGISTRY)}")
    spec = REGISTRY[name]
    fn = _with_family(spec.function) if spec.family_aware else spec.function
    return comfy.samplers.KSAMPLER(fn, extra_options=options)
