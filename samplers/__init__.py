"""The pack's samplers: pure torch, k-diffusion form, one shared loop (loop.py).

``REGISTRY`` is the one list of them: the sampler node's choices, its tooltip and the
host-side wrapping (which samplers must be told the model family) all come from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .bidirectional import sample_bdia, sample_o_belm
from .cfg_pp import cfg_pp_sampler
from .ddim_inversion import ddim_inversion
from .euler import euler, to_d
from .loop import sampler_function, sampling_loop


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    function: Callable  # k-diffusion form: (model, x, sigmas, extra_args, callback, disable, **options)
    description: str  # one line for the node's tooltip
    family_aware: bool = False  # needs family="eps"/"flow" (how the model mixes x0 and noise)


REGISTRY = {spec.name: spec for spec in (
    SamplerSpec("euler", sampler_function(euler), "Euler in sigma space (DDIM, eta 0)."),
    SamplerSpec("euler_cfg_pp", cfg_pp_sampler("euler"), "CFG++ Euler/DDIM.", family_aware=True),
    SamplerSpec("euler_ancestral_cfg_pp", cfg_pp_sampler("euler_ancestral"), "CFG++ Euler ancestral.",
                family_aware=True),
    SamplerSpec("dpmpp_2m_cfg_pp", cfg_pp_sampler("dpmpp_2m"), "CFG++ DPM++ 2M.", family_aware=True),
    SamplerSpec("ddim_cfg_pp_inversion", cfg_pp_sampler("ddim_inversion"),
                "CFG++ DDIM inversion (sigmas ascending, e.g. FlipSigmas; on flow models ending below 1).",
                family_aware=True),
    SamplerSpec("ddim_inversion", sampler_function(ddim_inversion),
                "DDIM inversion, the usual approximate one (sigmas ascending, e.g. FlipSigmas; on flow models "
                "ending below 1, e.g. FlipSigmas of SplitSigmas' low_sigmas)."),
    SamplerSpec("o_belm", sample_o_belm, "O-BELM, second-order two-step, exactly invertible (one evaluation "
                "per step).", family_aware=True),
    SamplerSpec("bdia", sample_bdia, "BDIA-DDIM at gamma 0.5, exactly invertible (one evaluation per step)."),
)}
# name -> sampler function, for callers that only run them.
SAMPLERS = {name: spec.function for name, spec in REGISTRY.items()}
FAMILY_AWARE = frozenset(name for name, spec in REGISTRY.items() if spec.family_aware)

__all__ = ["REGISTRY", "SamplerSpec", "SAMPLERS", "FAMILY_AWARE", "euler", "to_d", "sampler_function",
           "sampling_loop"]
