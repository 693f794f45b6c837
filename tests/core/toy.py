"""A toy denoiser for core tests: exact x0 estimate for Gaussian data of std ``s``,
shifted by a per-condition mean so that cond and uncond differ."""

import torch


def toy_denoiser(x, sigma, mean=0.0, s=1.0):
    sigma = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return (x * s**2 + mean * sigma**2) / (s**2 + sigma**2)
