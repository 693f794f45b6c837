"""The pack's samplers: pure torch, k-diffusion form, one shared loop (loop.py)."""

from .euler import euler, to_d
from .loop import sampler_function, sampling_loop

# name -> k-diffusion-form sampler function; the host side wraps each as a KSAMPLER.
SAMPLERS = {
    "euler": sampler_function(euler),
}

__all__ = ["SAMPLERS", "euler", "to_d", "sampler_function", "sampling_loop"]
