"""The pack's samplers as ComfyUI SAMPLER objects."""

from __future__ import annotations

import comfy.samplers

from ..samplers import SAMPLERS


def pack_sampler(name: str, **options) -> comfy.samplers.KSAMPLER:
    if name not in SAMPLERS:
        raise ValueError(f"unknown Guidance Lab sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    return comfy.samplers.KSAMPLER(SAMPLERS[name], extra_options=options)
