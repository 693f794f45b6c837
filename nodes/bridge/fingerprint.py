"""A short fingerprint of a model's weights, to tie calibration files to their model."""

from __future__ import annotations

import hashlib

import torch


def model_fingerprint(model_patcher, samples: int = 64, per_tensor: int = 4096) -> str:
    """sha256 over the model's prediction type (its model_sampling classes, so an eps model
    patched to v-prediction differs) and an evenly spread sample of its tensors (their first
    ``per_tensor`` values rounded to bfloat16, so fp32/fp16 copies of one model agree)."""
    state = model_patcher.model.diffusion_model.state_dict()
    names = sorted(state)
    digest = hashlib.sha256()
    sampling = model_patcher.get_model_object("model_sampling")
    digest.update(" ".join(c.__name__ for c in type(sampling).__mro__).encode())
    for name in names[:: max(1, len(names) // samples)]:
        values = state[name].detach().reshape(-1)[:per_tensor].to(torch.bfloat16).float().cpu()
        digest.update(name.encode())
        digest.update(values.numpy().tobytes())
    return digest.hexdigest()[:16]
