"""Per-sample norms, cosines and projections reduce over every non-batch dimension, on image
latents (B, C, H, W), video latents (B, C, T, H, W) and ComfyUI's packed nested latents
(B, 1, N) (issue 29, item 5): each against the same quantity of the flattened sample. A
reduction over the last three dimensions is per sample and per channel on video latents and
mixes samples on packed ones; tests/core/test_batch_independence.py runs every policy and
sampler on these layouts too."""

import pytest
import torch

from guidance_lab.guiders.adaptive import SPACES, agreement
from guidance_lab.guiders.apg import APGPolicy, project, rescale
from guidance_lab.guiders.policy import StepContext
from guidance_lab.samplers.edict import sample_edict, sample_edict_inversion

from .toy import PolicyModel, ToyPair

LAYOUTS = {"image": (3, 4, 6, 8), "video": (3, 4, 3, 4, 6), "packed": (3, 1, 96)}


def tensors(layout, seed=0):
    """Two batches whose samples differ in scale by orders of magnitude (float64)."""
    g = torch.Generator().manual_seed(seed)
    shape = LAYOUTS[layout]
    scale = torch.tensor([0.1, 1.0, 30.0], dtype=torch.float64).reshape(-1, *([1] * (len(shape) - 1)))
    return (scale * torch.randn(shape, generator=g, dtype=torch.float64),
            scale * torch.randn(shape, generator=g, dtype=torch.float64) + 0.5)


def flat(t):
    return t.reshape(t.shape[0], -1)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_apg_rescale_and_projection_are_per_whole_sample(layout):
    g, c = tensors(layout)
    r = 5.0
    out = rescale(g, r)
    torch.testing.assert_close(flat(out).norm(dim=1), flat(g).norm(dim=1).clamp(max=r))
    g_par, g_perp = project(g, c)
    torch.testing.assert_close(g_par + g_perp, g)
    # g_perp is orthogonal to D_c and g_par along it, each over the whole sample.
    dots = (flat(g_perp) * flat(c)).sum(1) / (flat(g_perp).norm(dim=1) * flat(c).norm(dim=1))
    assert dots.abs().max() < 1e-10, dots
    cos = torch.nn.functional.cosine_similarity(flat(g_par), flat(c), dim=1)
    torch.testing.assert_close(cos.abs(), torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_apg_reports_one_guidance_norm_per_sample(layout):
    cond, uncond = tensors(layout)
    run = APGPolicy(scale=5.0, eta=0.0, norm_threshold=0.0, momentum=0.0).start(4)
    step = StepContext(0, 4, cond, torch.tensor(1.0), False, "eps")
    metrics = run.guide(cond, uncond, step).metrics
    torch.testing.assert_close(metrics["guidance_norm"], flat(cond - uncond).norm(dim=1))


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("space", [s for s in SPACES if s != "auto"])
def test_ag_agreement_is_one_number_per_whole_sample(layout, space):
    cond, uncond = tensors(layout, seed=1)
    x, sigma = tensors(layout, seed=2)[0], torch.tensor(2.0, dtype=torch.float64)
    step = StepContext(0, 4, x, sigma, False, "eps")
    got = agreement(space, cond, uncond, step)
    c, u = flat(cond), flat(uncond)
    if space == "eps":
        c, u = (flat(x) - c) / 2.0, (flat(x) - u) / 2.0
    if space == "guidance":
        expected = (1 - (c - u).square().sum(1) / (2 * c.square().sum(1))).clamp_min(-1.0)
    else:
        expected = torch.nn.functional.cosine_similarity(c, u, dim=1)
    assert got.shape == (3,)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_edict_with_apg_round_trips_each_sample_and_keeps_samples_apart(layout):
    """EDICT's exactness check per sample, with a per-sample reduction in its guidance (APG
    without momentum, the stateless kind EDICT inverts); the inverted pair of a sample alone
    equals its pair inside the batch."""
    means_c, means_u = tensors(layout, seed=3)
    sigmas = torch.tensor([14.6, 6.0, 2.5, 1.0, 0.4, 0.1, 0.0], dtype=torch.float64)
    latent = tensors(layout, seed=4)[0]
    policy = APGPolicy(scale=3.0, eta=0.0, norm_threshold=2.0, momentum=0.0)

    def invert(samples):
        pair, inv = ToyPair(means_c[samples], means_u[samples]), {}
        model = PolicyModel(policy, pair, len(sigmas) - 1)
        sample_edict_inversion(model, latent[samples], sigmas.flip(0), callback=model.step_done, disable=True,
                               result=inv)
        return pair, inv["pair"]

    toy, (x, y) = invert([0, 1, 2])
    out = {}
    model = PolicyModel(policy, toy, len(sigmas) - 1)
    sample_edict(model, torch.zeros_like(latent), sigmas, callback=model.step_done, disable=True, pair=(x, y),
                 result=out)
    error = flat(out["pair"][0] - latent).abs().max(dim=1).values / flat(latent).abs().max(dim=1).values
    assert error.max() < 1e-9, error
    for i in range(3):
        _, (xi, yi) = invert([i])
        torch.testing.assert_close(xi, x[i:i + 1], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(yi, y[i:i + 1], rtol=1e-9, atol=1e-9)
