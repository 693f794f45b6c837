"""A toy denoiser for core tests: exact x0 estimate for Gaussian data of std ``s``,
shifted by a per-condition mean so that cond and uncond differ."""


def toy_denoiser(x, sigma, mean=0.0, s=1.0):
    sigma = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return (x * s**2 + mean * sigma**2) / (s**2 + sigma**2)


class ToyGuider:
    """A guided denoiser that follows ComfyUI's post-CFG hook convention, as guiders do:
    D_u + w (D_c - D_u), with ``sampler_post_cfg_function`` hooks seeing ``uncond_denoised``.
    ``scale`` may be a function of the evaluation's sigma (a time-varying CFG)."""

    def __init__(self, scale, cond_mean=1.0, uncond_mean=-1.0, family="eps"):
        self.scale, self.cond_mean, self.uncond_mean, self.family = scale, cond_mean, uncond_mean, family

    def denoise(self, x, sigma, mean):
        if self.family == "flow":  # exact x0 estimate for N(mean, 1) data under x = (1-s) x0 + s eps
            s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
            a = 1 - s
            return (a * x + s**2 * mean) / (a**2 + s**2)
        return toy_denoiser(x, sigma, mean)

    def __call__(self, x, sigma, model_options=None, **extra):
        model_options = model_options or {}
        cond = self.denoise(x, sigma, self.cond_mean)
        uncond = self.denoise(x, sigma, self.uncond_mean)
        scale = self.scale(float(sigma.reshape(-1)[0])) if callable(self.scale) else self.scale
        out = uncond + (cond - uncond) * scale
        for fn in model_options.get("sampler_post_cfg_function", []):
            out = fn({"denoised": out, "uncond_denoised": uncond, "cond_denoised": cond})
        return out
