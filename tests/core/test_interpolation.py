"""Smooth Diffusion's interpolation and ISTD metric, against closed forms."""

import math

import pytest
import torch

from guidance_lab.samplers.interpolation import (adjacent_distances, frame_positions, interpolate_embeddings,
                                                 interpolate_noises, istd, perceptual_distance, slerp, ssim)


def test_slerp_endpoints_are_exact_and_the_path_stays_on_the_sphere():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 4, 8, 8, generator=gen), torch.randn(3, 4, 8, 8, generator=gen)
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-6) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-6)
    mid = slerp(a, b, 0.5)
    # two unit-norm-ish orthogonal-ish noises: slerp keeps the norm, lerp would shrink it by ~sqrt(2)
    ratio = mid.flatten(1).norm(dim=1) / a.flatten(1).norm(dim=1)
    assert torch.allclose(ratio, torch.ones(3), atol=0.05)
    lerp_ratio = (0.5 * (a + b)).flatten(1).norm(dim=1) / a.flatten(1).norm(dim=1)
    assert (lerp_ratio < 0.8).all()


def test_slerp_of_orthogonal_unit_vectors_is_the_circle():
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    for t in (0.25, 0.5, 0.75):
        expected = torch.tensor([[math.cos(t * math.pi / 2), math.sin(t * math.pi / 2)]])
        assert torch.allclose(slerp(a, b, t), expected, atol=1e-6)


def test_slerp_of_parallel_noises_falls_back_to_lerp():
    a = torch.randn(1, 16)
    out = slerp(a, 2 * a, 0.5)
    assert torch.isfinite(out).all() and torch.allclose(out, 1.5 * a, atol=1e-5)


def test_frames_stack_on_the_batch_axis_and_reject_fewer_than_two():
    a, b = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    assert interpolate_noises(a, b, 5).shape == (10, 3, 4, 4)
    e = interpolate_embeddings(torch.zeros(1, 77, 8), torch.ones(1, 77, 8), 3)
    assert e.shape == (3, 77, 8) and torch.allclose(e[1], torch.full((77, 8), 0.5))
    assert frame_positions(2) == [0.0, 1.0]
    with pytest.raises(ValueError, match="at least 2 frames"):
        frame_positions(1)
    with pytest.raises(ValueError, match="different shapes"):
        interpolate_noises(a, torch.ones(2, 3, 4, 5), 4)


def test_ssim_is_one_for_identical_images_and_falls_with_noise():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 32, 32, generator=gen)
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=x.dtype), atol=1e-6)
    d = [float(perceptual_distance(x, (x + s * torch.randn(x.shape, generator=gen)).clamp(0, 1)).mean())
         for s in (0.0, 0.05, 0.2, 0.5)]
    assert d[0] < 1e-6 and d[0] < d[1] < d[2] < d[3]


def square_at(x: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(2)
    frame = 0.5 + 0.1 * torch.rand(1, 3, 32, 32, generator=gen)  # real frames are never perfectly flat
    frame[..., 10:20, x:x + 10] = torch.tensor([0.9, 0.2, 0.2]).view(1, 3, 1, 1)
    return frame


def test_istd_is_near_zero_for_even_steps_and_large_for_one_jump():
    """A square moving 1 px per frame (even steps) against the same 8 px done in one jump."""
    steady = torch.cat([square_at(4 + k) for k in range(9)])
    jumpy = torch.cat([square_at(4)] * 4 + [square_at(12)] * 5)
    s_std, s_mean, d = istd(steady)
    j_std, j_mean, _ = istd(jumpy)
    assert d.shape == (8,)
    assert s_std < 0.1 * s_mean  # equal steps: equal distances
    assert j_std > 10 * s_std
    with pytest.raises(ValueError):
        adjacent_distances(torch.zeros(1, 3, 8, 8))


def test_frames_too_small_for_ssim_are_refused_not_scored_as_identical():
    frames = torch.rand(3, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="too small"):
        istd(frames)


def test_adjacent_distances_a_few_pairs_at_a_time_equal_the_whole_sequence_at_once():
    """Large frames are compared a few pairs at a time (bounded memory), with the same result."""
    frames = torch.rand(7, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    whole = adjacent_distances(frames, chunk_elements=frames.numel())
    for elements in (1, 3 * 16 * 16, 2 * 3 * 16 * 16 + 5):
        assert torch.equal(adjacent_distances(frames, chunk_elements=elements), whole)
    assert whole.shape == (6,)
