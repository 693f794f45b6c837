"""The loop every pack sampler shares: one progress bar, one callback per step.

A sampler is written as a *step*: ``step(denoise, x, sigma, sigma_next, state) ->
(x_next, denoised)``, where ``denoise(z, sigma)`` calls the model on state ``z``; a
step may call it more than once (EDICT does). ``state`` is a dict private to one run
(multistep history); the loop keeps the step index in ``state["i"]`` and the schedule
as Python floats in ``state["sigmas"]``, read from the device once before the loop so
that steps branch on sigma values without a host sync per step. ``sampling_loop`` turns a
step into a sampler function of k-diffusion form, which ComfyUI wraps as a ``KSAMPLER``.

A step that calls ``denoise`` more than once says so in its ``evaluations`` attribute
(EDICT: 2); the sampler function carries it as ``evaluations_per_step``, from which the
guider knows which schedule step each model evaluation belongs to (guiders/guided_run.py).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from tqdm.auto import trange

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Step = Callable[[Denoise, torch.Tensor, torch.Tensor, torch.Tensor, dict], "tuple[torch.Tensor, torch.Tensor]"]


def schedule_denoiser(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: Optional[dict]):
    """``denoise(z, s)`` over a k-diffusion model for the samplers that run their own loop (EDICT,
    BDIA / O-BELM): a Python-float sigma becomes the model's batch of sigmas in the schedule's
    own dtype (float64 schedules stay float64)."""
    extra_args = {} if extra_args is None else extra_args
    s_in = torch.ones(x.shape[0], device=x.device, dtype=sigmas.dtype)

    def denoise(z, sigma):
        return model(z, sigma * s_in, **extra_args)

    return denoise


@torch.no_grad()
def sampling_loop(step: Step, model, x: torch.Tensor, sigmas: torch.Tensor,
                  extra_args: Optional[dict] = None, callback=None, disable=None,
                  state: Optional[dict] = None) -> torch.Tensor:
    """Run ``step`` over consecutive sigma pairs, k-diffusion style."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])

    def denoise(z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return model(z, sigma * s_in, **extra_args)

    state = {} if state is None else state
    state["sigmas"] = sigmas.tolist()
    for i in trange(len(sigmas) - 1, disable=disable):
        state["i"] = i
        x_next, denoised = step(denoise, x, sigmas[i], sigmas[i + 1], state)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = x_next
    return x


def require_ascending(sigmas: list, sampler: str) -> None:
    """ValueError unless the schedule rises, as an inversion sampler needs: a falling one (the
    scheduler's, not flipped) divides by its final 0 or drives the state off to garbage."""
    if any(b < a for a, b in zip(sigmas, sigmas[1:])):
        raise ValueError(f"{sampler} runs up the noise schedule, so its sigmas must rise; these fall "
                         f"({sigmas[0]:g} -> {sigmas[-1]:g}): put FlipSigmas between the scheduler and the sampler")


def sampler_function(step: Step):
    """A k-diffusion-form sampler ``fn(model, x, sigmas, extra_args, callback, disable)``."""

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None):
        return sampling_loop(step, model, x, sigmas, extra_args, callback, disable)

    sample.__name__ = f"sample_{getattr(step, '__name__', 'step')}"
    sample.__doc__ = step.__doc__
    sample.evaluations_per_step = getattr(step, "evaluations", 1)
    return sample
