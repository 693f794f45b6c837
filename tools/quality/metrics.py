"""Image-set metrics of the quality harness beyond adherence and saturation.

- ``diversity``: how different the images of one prompt are across seeds.
- ``distance_to_reference``: RMSE and PSNR (kornia) to a reference run at the same seeds,
  e.g. how far a cheaper guidance method lands from CFG.
- ``scene_distance``: a Fréchet distance between generated and real dataset images on
  ``scene_features``, hand-made features that the procedural data makes meaningful
  without any downloaded network (the role Inception features play in FID).
"""

from __future__ import annotations

import numpy as np
import torch

from .shapes import analyse_batch, _as_numpy

# The features of ``scene_features``, in order; the README's benchmark section cites them.
SCENE_FEATURES = (
    "background_r", "background_g", "background_b",  # median of the border pixels
    "shape_r", "shape_g", "shape_b",  # median of the shape's core (= backdrop when none found)
    "coverage",  # shape area / image area
    "centre_x", "centre_y",  # shape centroid / image side
    "chroma",  # mean over pixels of max - min channel
    "edge",  # mean absolute difference between neighbouring pixels: sharpness and noise
)


def _images(images) -> torch.Tensor:
    """(N, H, W, C) float64 tensor on the CPU from numpy or ComfyUI's IMAGE."""
    return torch.as_tensor(_as_numpy(images), dtype=torch.float64)


def _pairwise_rmse(group: torch.Tensor) -> torch.Tensor:
    flat = group.reshape(group.shape[0], -1)
    d2 = torch.cdist(flat, flat).pow(2) / flat.shape[1]
    i, j = torch.triu_indices(len(flat), len(flat), 1)
    return d2[i, j].sqrt()


def diversity(images, prompts) -> float:
    """Mean pairwise RMSE between the images that share a prompt (different seeds), averaged
    over the prompts that have at least two images; 0 when every seed gives the same image.
    ``prompts``: one key per image, the prompt or any label of the run it came from (the
    benchmark gives each scored prompt's index, so a prompt drawn twice counts as two)."""
    x = _images(images)
    if len(x) != len(prompts):
        raise ValueError(f"{len(x)} images but {len(prompts)} prompts")
    groups: dict = {}
    for index, prompt in enumerate(prompts):
        groups.setdefault(prompt, []).append(index)
    per_prompt = [_pairwise_rmse(x[idx]).mean() for idx in groups.values() if len(idx) > 1]
    if not per_prompt:
        raise ValueError("diversity needs at least two images of one prompt")
    return float(torch.stack(per_prompt).mean())


def distance_to_reference(images, reference) -> dict:
    """RMSE (mean over images) and PSNR in dB (peak 1.0, kornia, of the set's mean squared
    error, so that a few identical pairs do not make it infinite) of ``images`` against
    ``reference``, image i against reference i (same prompt and seed). Identical sets: inf."""
    import kornia

    x, ref = _images(images).clamp(0, 1), _images(reference).clamp(0, 1)
    if x.shape != ref.shape:
        raise ValueError(f"images {tuple(x.shape)} and reference {tuple(ref.shape)} differ in shape")
    rmse = (x - ref).pow(2).flatten(1).mean(1).sqrt()
    psnr = kornia.metrics.psnr(x.permute(0, 3, 1, 2), ref.permute(0, 3, 1, 2), 1.0)  # wants (N, C, H, W)
    return {"rmse": float(rmse.mean()), "psnr": float(psnr)}


def scene_features(images) -> np.ndarray:
    """(N, len(SCENE_FEATURES)) features of each image, see SCENE_FEATURES."""
    x = _as_numpy(images).astype(np.float64)
    found = analyse_batch(x)
    chroma = (x.max(-1) - x.min(-1)).mean((1, 2))
    edge = 0.5 * (np.abs(np.diff(x, axis=1)).mean((1, 2, 3)) + np.abs(np.diff(x, axis=2)).mean((1, 2, 3)))
    rows = [[*a.background_rgb, *a.colour_rgb, a.coverage, *a.centroid] for a in found]
    return np.concatenate([np.asarray(rows, np.float64), np.stack([chroma, edge], 1)], 1)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows are samples):
    |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), the formula of FID."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    # Tr((S_a S_b)^1/2) = Tr((R S_b R)^1/2) with R = S_a^1/2: a symmetric PSD form whose
    # eigenvalues stay real even when a feature is constant (the data never clips).
    root_a = _psd_sqrt(cov_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


# Features are fractions or colours in [0, 1]; a feature the data barely varies gets this
# spread instead of its own, so that a tiny real std cannot blow a small shift up.
MIN_FEATURE_STD = 0.02


def scene_distance(images, real_features: np.ndarray) -> float:
    """Fréchet distance of ``images`` to real dataset images, on scene features standardised
    by the real set's mean and std so that no feature dominates by its units."""
    mean, std = real_features.mean(0), np.maximum(real_features.std(0), MIN_FEATURE_STD)
    return frechet_distance((scene_features(images) - mean) / std, (real_features - mean) / std)
