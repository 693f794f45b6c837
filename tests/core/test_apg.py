import pytest
import torch

from guidance_lab.guiders import StepContext, cfg
from guidance_lab.guiders.apg import PRESETS, APGPolicy, project, rescale


def step(i=0):
    return StepContext(i, 10, torch.zeros(1), torch.ones(1))


def estimates(batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, 8, 8, generator=g), torch.randn(batch, 4, 8, 8, generator=g)


def test_oracle_eta_one_no_threshold_no_momentum_is_cfg():
    c, u = estimates()
    out = APGPolicy(7.5, eta=1.0, norm_threshold=0.0, momentum=0.0).start(10).guide(c, u, step())
    assert torch.allclose(out.denoised, cfg(c, u, 7.5), atol=2e-5, rtol=1e-5)


def test_projection_is_per_sample_and_exact_in_float64():
    c, u = estimates()
    g_par, g_perp = project(c - u, c)
    assert torch.allclose(g_par + g_perp, c - u, atol=1e-6)
    dots = (g_perp.double() * c.double()).flatten(1).sum(1)
    assert dots.abs().max() < 1e-4
    for i in range(3):  # the same as projecting each sample alone
        p1, q1 = project((c - u)[i:i + 1], c[i:i + 1])
        assert torch.equal(p1, g_par[i:i + 1]) and torch.equal(q1, g_perp[i:i + 1])


def test_rescale_caps_each_sample_norm():
    g = torch.stack([torch.ones(4, 2, 2) * 10, torch.ones(4, 2, 2) * 0.01])
    out = rescale(g, 5.0)
    norms = out.flatten(1).norm(dim=1)
    assert torch.allclose(norms[0], torch.tensor(5.0)) and torch.equal(out[1], g[1])
    assert torch.equal(rescale(g, 0.0), g)


def test_eta_zero_drops_the_parallel_part():
    c, u = estimates(batch=1)
    out = APGPolicy(5.0, eta=0.0, norm_threshold=0.0, momentum=0.0).start(3).guide(c, u, step())
    _, g_perp = project(c - u, c)
    assert torch.allclose(out.denoised, c + 4.0 * g_perp, atol=1e-5)


def test_momentum_accumulates_within_a_run_and_restarts_per_run():
    c, u = estimates(batch=2)
    policy = APGPolicy(3.0, eta=1.0, norm_threshold=0.0, momentum=-0.5)
    run = policy.start(3)
    first = run.guide(c, u, step(0)).denoised
    second = run.guide(c, u, step(1)).denoised
    # m1 = g, m2 = g - 0.5 g = 0.5 g
    assert torch.allclose(first, c + 2.0 * (c - u), atol=1e-5)
    assert torch.allclose(second, c + 2.0 * 0.5 * (c - u), atol=1e-5)
    assert torch.equal(policy.start(3).guide(c, u, step(0)).denoised, first)


def test_reports_the_guidance_norm_per_sample():
    c, u = estimates(batch=3)
    out = APGPolicy(5.0).start(3).guide(c, u, step())
    assert out.metrics["guidance_norm"].shape == (3,)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets(preset):
    p = APGPolicy.from_preset(preset, 9.0)
    assert (p.eta, p.norm_threshold, p.momentum) == PRESETS[preset] and p.scale == 9.0


def test_rejects_negative_threshold():
    with pytest.raises(ValueError, match="norm_threshold"):
        APGPolicy(5.0, norm_threshold=-1.0)
