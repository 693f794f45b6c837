import math

import pytest
import torch

from guidance_lab.guiders import CFGPolicy, StepContext, cfg


def step(uncond_requested=False):
    return StepContext(0, 10, torch.zeros(1), torch.ones(1), uncond_requested)


def test_cfg_is_uncond_plus_scaled_difference():
    c, u = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    assert torch.equal(cfg(c, u, 7.5), u + (c - u) * 7.5)
    assert torch.allclose(cfg(c, u, 1.0), c, atol=1e-6)
    assert torch.allclose(cfg(c, u, 0.0), u, atol=1e-6)


def test_cfg_run_skips_uncond_only_at_scale_one():
    assert CFGPolicy(7.5).start(10).needs_uncond(step())
    assert not CFGPolicy(1.0).start(10).needs_uncond(step())


def test_cfg_run_evaluates_uncond_when_sampler_asks_even_at_scale_one():
    assert CFGPolicy(1.0).start(10).needs_uncond(step(uncond_requested=True))


def test_cfg_guide_without_uncond_returns_cond_exactly():
    c = torch.randn(3, 4, 8, 8)
    out = CFGPolicy(1.0).start(4).guide(c, None, step())
    assert out.denoised is c and out.uncond is None


def test_cfg_guide_hands_on_uncond():
    c, u = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    out = CFGPolicy(3.0).start(4).guide(c, u, step())
    assert out.uncond is u
    assert torch.equal(out.denoised, u + (c - u) * 3.0)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_cfg_policy_rejects_non_finite_scale(bad):
    with pytest.raises(ValueError, match="finite"):
        CFGPolicy(bad)


def test_policy_settings_and_runs_are_independent():
    policy = CFGPolicy(5.0)
    assert policy.settings() == {"scale": 5.0}
    assert policy.start(3) is not policy.start(3)
