"""The pack's samplers: pure torch, k-diffusion form, one shared loop (loop.py)."""

from .cfg_pp import cfg_pp_sampler
from .euler import euler, to_d
from .loop import sampler_function, sampling_loop

# name -> k-diffusion-form sampler function; the host side wraps each as a KSAMPLER.
SAMPLERS = {
    "euler": sampler_function(euler),
    "euler_cfg_pp": cfg_pp_sampler("euler"),
    "euler_ancestral_cfg_pp": cfg_pp_sampler("euler_ancestral"),
    "dpmpp_2m_cfg_pp": cfg_pp_sampler("dpmpp_2m"),
    "ddim_cfg_pp_inversion": cfg_pp_sampler("ddim_inversion"),
}
# Samplers that must know the model family (eps or flow); the host side passes it.
FAMILY_AWARE = {"euler_cfg_pp", "euler_ancestral_cfg_pp", "dpmpp_2m_cfg_pp", "ddim_cfg_pp_inversion"}

__all__ = ["SAMPLERS", "FAMILY_AWARE", "euler", "to_d", "sampler_function", "sampling_loop"]
