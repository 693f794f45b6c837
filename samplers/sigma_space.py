"""Conversions between a denoised estimate and the noise it implies (both directions), per
model family, and the per-sample broadcast every policy and sampler uses.

ComfyUI's state convention: ``x = x0 + sigma * eps`` for eps and v-prediction models,
``x = (1 - sigma) * x0 + sigma * eps`` for flow (CONST) models. The host side tells the
core which family a model is; everything else is plain torch.
"""

from __future__ import annotations

import torch

FAMILIES = ("eps", "flow")


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """One value per sample (batch dimension first) shaped to broadcast over ``like``."""
    return values.reshape(-1, *([1] * (like.ndim - 1)))


def expand(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """sigma (scalar or per-sample) shaped to broadcast over ``like``."""
    sigma = torch.as_tensor(sigma, device=like.device, dtype=like.dtype)
    return per_sample(sigma, like) if sigma.ndim else sigma


def alpha(sigma: float, family: str = "eps") -> float:
    """The weight of x0 in the state: 1 for eps models, 1 - sigma for flow models."""
    return 1.0 - sigma if family == "flow" else 1.0


def noise_from_denoised(x: torch.Tensor, denoised: torch.Tensor, sigma, family: str = "eps") -> torch.Tensor:
    """eps = (x - D) / sigma (eps models) or (x - (1 - sigma) D) / sigma (flow models)."""
    s = expand(sigma, x)
    if family == "flow":
        return (x - (1 - s) * denoised) / s
    if family == "eps":
        return (x - denoised) / s
    raise ValueError(f"unknown model family {family!r}; expected one of {FAMILIES}")


def denoised_from_noise(x: torch.Tensor, eps: torch.Tensor, sigma, family: str = "eps") -> torch.Tensor:
    """The x0 estimate a noise estimate implies: (x - sigma eps) / alpha(sigma)."""
    s = expand(sigma, x)
    if family == "flow":
        return (x - s * eps) / (1 - s)
    if family == "eps":
        return x - s * eps
    raise ValueError(f"unknown model family {family!r}; expected one of {FAMILIES}")


def x0_along(x: torch.Tensor, direction: torch.Tensor, sigma) -> torch.Tensor:
    """The x0 of the state x at level sigma along a direction d = (x - D) / sigma' taken at
    another level: x - sigma d (every family; with noise_along, alpha(sigma) x0 + sigma eps = x,
    and re-noising at any level t gives DDIM's step x + (t - sigma) d)."""
    return x - expand(sigma, x) * direction


def noise_along(x: torch.Tensor, direction: torch.Tensor, sigma, family: str = "eps") -> torch.Tensor:
    """The eps of the state x at level sigma along d (see x0_along): d (eps models) or
    x + (1 - sigma) d (flow models)."""
    if family == "flow":
        return x + (1 - expand(sigma, x)) * direction
    if family == "eps":
        return direction
    raise ValueError(f"unknown model family {family!r}; expected one of {FAMILIES}")
