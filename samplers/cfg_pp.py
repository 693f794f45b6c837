"""CFG++ (Chung et al. 2024): denoise with the guided estimate, re-noise with the
unconditional noise, for any guidance policy and every model family.

The unconditional estimate D_u comes from the guider through ComfyUI's post-CFG hook
convention (``sampler_post_cfg_function`` receives ``uncond_denoised``), so these
samplers run with the pack's guiders and with ComfyUI's own. The guider's scale is
CFG++'s lambda (about 0.6 behaves like CFG 7-9 on SD1.5). A Guidance Lab guider hands on
D_c as "uncond" for every sample that is conditional-only (Adaptive Guidance after that
sample's switch, even while the rest of its batch still evaluates uncond), so CFG++ then
reduces to the plain conditional sampler for that sample, as it would alone, instead of
re-noising with zeros or with a D_u its guidance no longer uses.

States are x = alpha(sigma) x0 + sigma eps with alpha = 1 (eps, v-prediction) or
1 - sigma (flow); re-noising uses alpha, never ``D + sigma * eps`` for flow models.
Where ComfyUI defines the same sampler (eps models) the results agree to rounding:
ComfyUI computes alpha = sigma * exp(-log sigma), which is 1 up to float error.
"""

from __future__ import annotations

import math

import torch

from .loop import require_ascending, sampling_loop
from .euler import to_d
from .sigma_space import alpha, noise_along, noise_from_denoised, x0_along


def uncond_tap(extra_args: dict) -> "tuple[dict, dict]":
    """extra_args that make the guider hand over D_u at every evaluation, and the dict it lands in."""
    seen: dict = {}

    def post_cfg(args):
        seen["uncond"] = args["uncond_denoised"]
        return args["denoised"]

    options = dict(extra_args.get("model_options", {}))
    options["sampler_post_cfg_function"] = [*options.get("sampler_post_cfg_function", []), post_cfg]
    options["disable_cfg1_optimization"] = True
    return {**extra_args, "model_options": options}, seen


def guided_and_uncond(denoise, x, sigma, tap: dict) -> "tuple[torch.Tensor, torch.Tensor]":
    """(D_guided, D_u) of one evaluation; D_u must come from this evaluation's post-CFG hook,
    never from an earlier step's."""
    tap.pop("uncond", None)
    denoised = denoise(x, sigma)
    if "uncond" not in tap:
        raise RuntimeError("CFG++: the guider did not hand over the unconditional estimate (ComfyUI's "
                           "sampler_post_cfg_function hook); use a guider that calls it, such as ComfyUI's "
                           "CFGGuider or a Guidance Lab guider")
    return denoised, tap.pop("uncond")


def ancestral_split(sigma: float, sigma_next: float, a: float, a_next: float, eta: float) -> "tuple[float, float]":
    """(sigma_down, sigma_up) of an ancestral step, taken in the alpha-free coordinates
    sigma / alpha so that flow models get the right noise levels."""
    if eta == 0 or sigma_next == 0:
        return sigma_next, 0.0
    # A flow schedule starts at sigma = 1, where alpha = 0: the alpha-free level is
    # infinite there (pure noise), and the step's new noise is up to all of sigma'.
    s = sigma / a if a > 0 else math.inf
    s_next = sigma_next / a_next
    up = min(s_next, eta * s_next * math.sqrt(max(0.0, 1 - (s_next / s) ** 2)))
    down = math.sqrt(s_next**2 - up**2)
    return a_next * down, a_next * up


def half_log_snr(sigma: float, family: str) -> float:
    """lambda = log(alpha / sigma); -inf at pure noise (flow models at sigma = 1)."""
    a = alpha(sigma, family)
    return math.log(a / sigma) if a > 0 else -math.inf


def make_cfg_pp_step(family: str, eta: float = 0.0, s_noise: float = 1.0, noise=None, order: int = 1):
    """A loop step for CFG++ Euler/DDIM (eta 0), Euler ancestral (eta > 0) or DPM++ 2M (order 2).

    Eq. (CFG++, Alg. 1 in sigma space): x' = alpha' D_lam + sigma_down eps_u (+ alpha' sigma_up z);
    DPM++ 2M adds alpha' (1 - e^-h) / (2 r) (D_lam - D_u,prev) and keeps D_u as the history."""

    def step(denoise, x, sigma, sigma_next, state):
        i, sig = state["i"], state["sigmas"]
        s, s_next = sig[i], sig[i + 1]
        denoised, uncond = guided_and_uncond(denoise, x, sigma, state["tap"])
        eps_u = noise_from_denoised(x, uncond, sigma, family)
        if s_next == 0:
            x_next = denoised
        else:
            a, a_next = alpha(s, family), alpha(s_next, family)
            down, up = ancestral_split(s, s_next, a, a_next, eta)
            x_next = a_next * denoised + down * eps_u
            if order == 2 and "old_uncond" in state:
                h = half_log_snr(s_next, family) - half_log_snr(s, family)
                h_last = half_log_snr(s, family) - half_log_snr(sig[i - 1], family)
                if h != 0 and h_last != 0:  # a repeated sigma has no slope to extrapolate: first order there
                    r = h_last / h
                    x_next = x_next + a_next * (-math.expm1(-h)) / (2 * r) * (denoised - state["old_uncond"])
            if up > 0 and s_noise > 0:
                x_next = x_next + noise(x) * s_noise * up  # up already carries alpha'
        state["old_uncond"] = uncond
        return x_next, denoised

    return step


def make_inversion_step(family: str):
    """CFG++ DDIM inversion (sigma ascending; the reference's DDIM CFG++ inversion): the model
    is asked at the known state x and the target level sigma', x is split at its own level
    along the unconditional direction (x0_u) and re-noised with the guided one:
    x' = alpha' x0_u + sigma' eps_lam. With cond == uncond it is DDIM inversion step for step,
    and the step up from sigma 0 (a schedule that keeps its 0) needs no special case."""

    def step(denoise, x, sigma, sigma_next, state):
        i, sig = state["i"], state["sigmas"]
        if i == 0:
            require_ascending(sig, "ddim_cfg_pp_inversion")
        denoised, uncond = guided_and_uncond(denoise, x, sigma_next, state["tap"])
        x0 = x0_along(x, to_d(x, sigma_next, uncond), sig[i])
        eps_guided = noise_along(x, to_d(x, sigma_next, denoised), sig[i], family)
        return alpha(sig[i + 1], family) * x0 + sig[i + 1] * eps_guided, denoised

    return step


def cfg_pp_sampler(kind: str):
    """A k-diffusion-form CFG++ sampler; ``family`` and ``noise_sampler`` come as options."""

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None, family="eps",
               eta=1.0, s_noise=1.0, noise_sampler=None):
        extra_args, tap = uncond_tap(extra_args or {})
        if kind == "euler":
            step = make_cfg_pp_step(family)
        elif kind == "euler_ancestral":
            if noise_sampler is None:
                generator = torch.Generator(device=x.device)
                generator.manual_seed(int(extra_args.get("seed", 0) or 0))

                def noise_sampler(z):
                    return torch.randn(z.shape, dtype=z.dtype, device=z.device, generator=generator)
            step = make_cfg_pp_step(family, eta=eta, s_noise=s_noise, noise=noise_sampler)
        elif kind == "dpmpp_2m":
            step = make_cfg_pp_step(family, order=2)
        elif kind == "ddim_inversion":
            step = make_inversion_step(family)
        else:
            raise ValueError(f"unknown CFG++ sampler {kind!r}")
        return sampling_loop(step, model, x, sigmas, extra_args, callback, disable, state={"tap": tap})

    sample.__name__ = f"sample_{kind}_cfg_pp"
    sample.evaluations_per_step = 1
    return sample
