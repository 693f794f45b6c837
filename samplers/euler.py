"""Euler / DDIM in sigma space (Karras et al. 2022, Alg. 2 without churn; Song et al. 2021)."""

from __future__ import annotations

import torch


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The ODE direction (x - D) / sigma: the noise estimate for eps models, the velocity
    for flow (CONST) models."""
    return (x - denoised) / sigma


def euler(denoise, x, sigma, sigma_next, state):
    """x' = x + (sigma' - sigma) * d; with a deterministic x0 estimate this is DDIM (eta = 0)."""
    denoised = denoise(x, sigma)
    return x + to_d(x, sigma, denoised) * (sigma_next - sigma), denoised
