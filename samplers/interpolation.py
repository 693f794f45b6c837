"""Smooth Diffusion's latent interpolation and its smoothness metric (Guo et al., CVPR 2024).

Interpolation between two initial noises uses spherical linear interpolation (slerp), which
keeps each frame on the Gaussian shell where the noises live, with linear interpolation as
the fallback when the two are nearly parallel; text embeddings are interpolated linearly.

ISTD (interpolation smoothness) is the standard deviation of the perceptual distances
between adjacent frames: a smooth sequence changes by similar amounts from frame to frame.
The paper measures with LPIPS, whose network weights cannot be had offline here, so the
distance is ``1 - SSIM`` averaged over three scales of a Gaussian pyramid (multi-scale
structural dissimilarity). Like LPIPS it compares local structure, contrast and brightness
rather than raw pixels, grows monotonically as an image drifts from its neighbour, is 0 for
identical frames and insensitive to a sub-pixel shift of flat regions, so it ranks "jumpy"
sequences (one big change between two frames) above gradual ones the way LPIPS does.
"""

from __future__ import annotations

import torch

# Below this angle (radians) between two noises slerp's 1/sin(theta) loses precision.
PARALLEL_ANGLE = 1e-4


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation of two noises per sample, lerp when nearly parallel (paper Sec. 4)."""
    af, bf = a.flatten(1).double(), b.flatten(1).double()
    cos = (af * bf).sum(1) / (af.norm(dim=1) * bf.norm(dim=1)).clamp_min(1e-30)
    theta = torch.arccos(cos.clamp(-1.0, 1.0))
    sin = torch.sin(theta)
    wa = torch.where(theta > PARALLEL_ANGLE, torch.sin((1 - t) * theta) / sin.clamp_min(1e-30),
                     torch.full_like(theta, 1 - t))
    wb = torch.where(theta > PARALLEL_ANGLE, torch.sin(t * theta) / sin.clamp_min(1e-30),
                     torch.full_like(theta, t))
    out = wa[:, None] * af + wb[:, None] * bf
    return out.reshape(a.shape).to(a.dtype)


def frame_positions(frames: int) -> list:
    """Evenly spaced t in [0, 1], both ends included."""
    if frames < 2:
        raise ValueError(f"an interpolation needs at least 2 frames, got {frames}")
    return [i / (frames - 1) for i in range(frames)]


def interpolate_noises(a: torch.Tensor, b: torch.Tensor, frames: int) -> torch.Tensor:
    """Frames of slerp(a, b, t) stacked on the batch axis: (frames * batch, ...)."""
    if a.shape != b.shape:
        raise ValueError(f"the two noises have different shapes {tuple(a.shape)} and {tuple(b.shape)}")
    return torch.cat([slerp(a, b, t) for t in frame_positions(frames)])


def interpolate_embeddings(a: torch.Tensor, b: torch.Tensor, frames: int) -> torch.Tensor:
    """Frames of the linear interpolation (1 - t) a + t b, stacked on the batch axis."""
    if a.shape != b.shape:
        raise ValueError(f"the two embeddings have different shapes {tuple(a.shape)} and {tuple(b.shape)}")
    return torch.cat([torch.lerp(a, b, t) for t in frame_positions(frames)])


def _gaussian_window(size: int, sigma: float, channels: int, like: torch.Tensor) -> torch.Tensor:
    x = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM per image (Wang et al. 2004) of images (N, C, H, W) in [0, 1]."""
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    size = min(window, a.shape[-1], a.shape[-2])
    size -= 1 - size % 2  # odd, so the window is centred
    w = _gaussian_window(size, sigma, a.shape[1], a)

    def blur(z):
        return torch.nn.functional.conv2d(z, w, groups=a.shape[1])

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


def perceptual_distance(a: torch.Tensor, b: torch.Tensor, scales: int = 3) -> torch.Tensor:
    """Multi-scale structural dissimilarity, mean over scales of 1 - SSIM (the LPIPS stand-in);
    images in [0, 1] (clamped)."""
    a, b = a.double().clamp(0, 1), b.double().clamp(0, 1)
    total = torch.zeros(a.shape[0], dtype=torch.float64, device=a.device)
    used = 0
    for _ in range(scales):
        if min(a.shape[-2:]) < 3:
            break
        total += 1 - ssim(a, b)
        used += 1
        a = torch.nn.functional.avg_pool2d(a, 2)
        b = torch.nn.functional.avg_pool2d(b, 2)
    if not used:  # no scale to compare at: 0 would read as "identical"
        raise ValueError(f"frames of {a.shape[-1]}x{a.shape[-2]} pixels are too small for SSIM (at least 3x3)")
    return total / used


def adjacent_distances(frames: torch.Tensor, chunk_elements: int = 2 ** 20) -> torch.Tensor:
    """Distances between consecutive frames of a sequence (N, C, H, W): N - 1 values.

    A few pairs at a time (about ``chunk_elements`` values per side): the float64 SSIM makes
    some twenty frame-sized intermediates, which for a whole sequence of large frames would
    exhaust the memory."""
    if frames.shape[0] < 2:
        raise ValueError(f"a sequence needs at least 2 frames, got {frames.shape[0]}")
    count = frames.shape[0] - 1
    pairs = max(chunk_elements // max(frames[0].numel(), 1), 1)
    return torch.cat([perceptual_distance(frames[k:min(k + pairs, count)], frames[k + 1:min(k + pairs, count) + 1])
                      for k in range(0, count, pairs)])


def istd(frames: torch.Tensor) -> "tuple[float, float, torch.Tensor]":
    """ISTD (paper Sec. 5.1): std of adjacent-frame distances; also their mean and the distances."""
    d = adjacent_distances(frames)
    std = float(d.std(unbiased=False)) if d.numel() > 1 else 0.0
    return std, float(d.mean()), d


__all__ = ["slerp", "frame_positions", "interpolate_noises", "interpolate_embeddings", "ssim",
           "perceptual_distance", "adjacent_distances", "istd"]
