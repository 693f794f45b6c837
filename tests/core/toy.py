"""A toy denoiser for core tests: exact x0 estimate for Gaussian data of std ``s``,
shifted by a per-condition mean so that cond and uncond differ."""

import torch

from guidance_lab.guiders import GuidancePolicy, GuidedRun
from guidance_lab.samplers import FAMILY_AWARE, SAMPLERS


def toy_denoiser(x, sigma, mean=0.0, s=1.0):
    sigma = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return (x * s**2 + mean * sigma**2) / (s**2 + sigma**2)


def exact_denoiser(x, sigma, mean, family="eps"):
    """The exact x0 estimate for N(mean, 1) data, for eps (x = x0 + s eps) or flow
    (x = (1 - s) x0 + s eps) states."""
    if family == "flow":
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        a = 1 - s
        return (a * x + s**2 * mean) / (a**2 + s**2)
    return toy_denoiser(x, torch.as_tensor(sigma, dtype=x.dtype), mean)


class ToyGuider:
    """A guided denoiser that follows ComfyUI's post-CFG hook convention, as guiders do:
    D_u + w (D_c - D_u), with ``sampler_post_cfg_function`` hooks seeing ``uncond_denoised``.
    ``scale`` may be a function of the evaluation's sigma (a time-varying CFG)."""

    def __init__(self, scale, cond_mean=1.0, uncond_mean=-1.0, family="eps"):
        self.scale, self.cond_mean, self.uncond_mean, self.family = scale, cond_mean, uncond_mean, family

    def denoise(self, x, sigma, mean):
        return exact_denoiser(x, sigma, mean, self.family)

    def __call__(self, x, sigma, model_options=None, **extra):
        model_options = model_options or {}
        cond = self.denoise(x, sigma, self.cond_mean)
        uncond = self.denoise(x, sigma, self.uncond_mean)
        scale = self.scale(float(sigma.reshape(-1)[0])) if callable(self.scale) else self.scale
        out = uncond + (cond - uncond) * scale
        for fn in model_options.get("sampler_post_cfg_function", []):
            out = fn({"denoised": out, "uncond_denoised": uncond, "cond_denoised": cond})
        return out


class ToyPair:
    """Per-sample conditional and unconditional data means, each with its exact denoiser:
    a model whose D_c and D_u of one sample never depend on the other samples."""

    def __init__(self, cond_means, uncond_means, family="eps"):
        self.cond_means, self.uncond_means, self.family = cond_means, uncond_means, family

    def __getitem__(self, index) -> "ToyPair":
        return ToyPair(self.cond_means[index], self.uncond_means[index], self.family)

    def __len__(self) -> int:
        return self.cond_means.shape[0]

    def estimates(self, x, sigma):
        """(D_c, D_u) at state x and noise level sigma."""
        return (exact_denoiser(x, sigma, self.cond_means, self.family),
                exact_denoiser(x, sigma, self.uncond_means, self.family))


class PolicyModel:
    """A Guidance Lab guider in plain torch: a GuidedRun over a ToyPair, called by a
    k-diffusion-form sampler. Like the ComfyUI guider (nodes/bridge/policy_guider.py) it
    evaluates uncond only when the policy asks, hands ComfyUI's zero placeholder for a
    skipped uncond to nobody, and gives CFG++ samplers ``Guided.renoise_uncond`` through
    the post-CFG hook."""

    def __init__(self, policy: GuidancePolicy, pair: ToyPair, total_steps: int, plan=None):
        self.pair = pair
        self.run = GuidedRun(policy, total_steps, len(pair), pair.family, plan)

    def __call__(self, x, sigma, model_options=None, **extra):
        model_options = model_options or {}

        def evaluate(need_uncond):
            self.run.count_evaluations(x.shape[0] * (2 if need_uncond else 1))
            cond, uncond = self.pair.estimates(x, sigma)
            # ComfyUI's calc_cond_batch leaves a skipped condition's output at zeros.
            return cond, (uncond if need_uncond else torch.zeros_like(cond))

        requested = bool(model_options.get("disable_cfg1_optimization", False))
        cond, guided = self.run.denoise(x, sigma, evaluate, requested)
        out = guided.denoised
        for fn in model_options.get("sampler_post_cfg_function", []):
            out = fn({"denoised": out, "uncond_denoised": guided.renoise_uncond(cond), "cond_denoised": cond})
        return out

    def step_done(self, info: dict) -> None:
        self.run.step_done(info["i"])


def sample_policy(policy: GuidancePolicy, pair: ToyPair, x, sigmas, sampler: str, **options):
    """Run one of the pack's samplers with ``policy`` on ``pair``: (final state, record)."""
    model = PolicyModel(policy, pair, len(sigmas) - 1)
    if sampler in FAMILY_AWARE:
        options["family"] = pair.family
    out = SAMPLERS[sampler](model, x, sigmas, {}, callback=model.step_done, disable=True, **options)
    return out, model.run.finish()


# ||D_c - D_u|| of the three samples of ``mixed_pair``: 10 : 0.1 : 1, two orders of
# magnitude apart, so Adaptive Guidance switches them at different steps.
MIXED_GUIDANCE = (10.0, 0.1, 1.0)


def mixed_pair(family="eps", shape=(3, 4, 4)) -> ToyPair:
    """Three samples with random per-sample data means (float64): the unconditional mean
    is the conditional one plus noise scaled by ``MIXED_GUIDANCE``."""
    g = torch.Generator().manual_seed(0)
    size = (len(MIXED_GUIDANCE), *shape)
    cond = torch.randn(size, generator=g, dtype=torch.float64)
    scale = torch.tensor(MIXED_GUIDANCE, dtype=torch.float64).reshape(-1, *([1] * len(shape)))
    return ToyPair(cond, cond + scale * torch.randn(size, generator=g, dtype=torch.float64), family)
