"""AGD's training objective and schedule [paper: CFG-trajectory training]; pure torch.

Batches are a function of (seed, step) alone and are split evenly over processes, so a
run on N processes (gradients averaged) equals one process with the same global batch,
and a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

LOSS_SPACES = ("denoised", "noise")


def lr_at(step: int, steps: int, lr: float, warmup_frac: float) -> float:
    """[reference code: schedule]: linear warm-up over ``warmup_frac``, then cosine decay to 0."""
    warmup = max(int(round(warmup_frac * steps)), 1)
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(steps - warmup, 1)
    return lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def batch_indices(seed: int, step: int, samples: int, batch: int, rank: int = 0,
                  world: int = 1) -> np.ndarray:
    """[paper: CFG-trajectory training]: step ``step``'s global batch of trajectory samples,
    this process's share of it."""
    if batch % world:
        raise ValueError(f"a global batch of {batch} does not split evenly over {world} processes")
    rows = np.random.default_rng([seed, step]).integers(0, samples, size=batch)
    share = batch // world
    return rows[rank * share:(rank + 1) * share]


def agd_loss(pred: torch.Tensor, target: torch.Tensor, sigma: torch.Tensor,
             space: str = "denoised") -> torch.Tensor:
    """[paper: CFG-trajectory training], the distillation loss: MSE of the adapted model's output to the CFG output.

    ``denoised``: on ComfyUI's denoised estimates (every family alike). ``noise``: on the noise
    estimate (x - D) / sigma, the paper's eps-MSE on an eps model (and the velocity MSE on a
    flow model): the denoised error weighted by 1 / sigma^2."""
    if space == "noise":
        weight = sigma.reshape(-1, *([1] * (pred.ndim - 1)))
        return F.mse_loss(pred / weight, target / weight)
    if space != "denoised":
        raise ValueError(f"loss space must be one of {LOSS_SPACES}, got {space!r}")
    return F.mse_loss(pred, target)


__all__ = ["LOSS_SPACES", "agd_loss", "batch_indices", "lr_at"]
