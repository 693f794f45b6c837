import pytest
import torch

from guidance_lab.guiders import CFGPolicy, GuidedRun, StepContext, cfg
from guidance_lab.guiders.adaptive import AdaptivePolicy, cosine_per_sample
from guidance_lab.guiders.apg import APGPolicy
from guidance_lab.samplers.sigma_space import noise_from_denoised


def ctx(i, x, sigma=2.0, family="eps"):
    return StepContext(i, 10, x, torch.full((x.shape[0],), sigma), family=family)


def test_cosine_is_per_sample():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert torch.allclose(cosine_per_sample(a, b), torch.tensor([1.0, 0.0]))


def test_noise_from_denoised_per_family():
    x, d = torch.full((1, 2), 3.0), torch.ones(1, 2)
    assert torch.allclose(noise_from_denoised(x, d, torch.tensor([2.0]), "eps"), torch.full((1, 2), 1.0))
    assert torch.allclose(noise_from_denoised(x, d, torch.tensor([0.5]), "flow"), torch.full((1, 2), 5.0))
    with pytest.raises(ValueError):
        noise_from_denoised(x, d, torch.tensor([1.0]), "x0")


def test_before_the_switch_it_is_exactly_cfg():
    x = torch.randn(2, 4, 4, 4)
    c, u = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    run = AdaptivePolicy(threshold=1.0, inner=CFGPolicy(6.0)).start(10)
    out = run.guide(c, u, ctx(0, x))
    assert torch.equal(out.denoised, cfg(c, u, 6.0))
    assert run.needs_uncond(ctx(1, x))


def test_switched_samples_go_conditional_only_and_uncond_is_dropped_when_all_have():
    x = torch.randn(2, 4, 4, 4) * 3
    c = torch.randn(2, 4, 4, 4)
    u = c.clone()
    u[1] = torch.randn(4, 4, 4)  # sample 0 agrees (cos 1), sample 1 does not
    run = AdaptivePolicy(threshold=0.99, inner=CFGPolicy(5.0)).start(10)
    first = run.guide(c, u, ctx(0, x))
    assert torch.equal(first.denoised, cfg(c, u, 5.0))  # the crossing step still uses CFG
    second = run.guide(c, u, ctx(1, x))
    assert torch.equal(second.denoised[0], c[0]) and torch.equal(second.denoised[1], cfg(c, u, 5.0)[1])
    assert run.needs_uncond(ctx(2, x))  # sample 1 still needs it
    run.guide(c, c, ctx(2, x))  # now sample 1 agrees too
    assert not run.needs_uncond(ctx(3, x))
    assert torch.equal(run.guide(c, None, ctx(3, x)).denoised, c)
    assert run.decisions()["switch_step"] == [0, 2]


def test_nfe_saved_is_counted_honestly():
    x = torch.randn(1, 4, 4, 4)
    c = torch.randn(1, 4, 4, 4)
    run = GuidedRun(AdaptivePolicy(threshold=0.9), total_steps=5, batch_size=1)
    for i in range(5):
        def evaluate(need_uncond):
            run.count_evaluations(2 if need_uncond else 1)
            return c, (c * 1.0001 if need_uncond else None)
        run.denoise(x, torch.tensor([1.0]), evaluate)
        run.step_done(i)
    record = run.finish()
    assert record.nfe_per_step == [2, 1, 1, 1, 1]
    assert record.decisions["switch_step"] == [0]


def test_wraps_apg():
    x = torch.randn(1, 4, 4, 4)
    c, u = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)
    inner = APGPolicy(8.0)
    out = AdaptivePolicy(threshold=1.0, inner=inner).start(4).guide(c, u, ctx(0, x))
    assert torch.equal(out.denoised, inner.start(4).guide(c, u, ctx(0, x)).denoised)
    assert AdaptivePolicy(inner=inner).settings()["inner"] == "apg"


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_rejects_thresholds_outside_zero_one(bad):
    with pytest.raises(ValueError, match="threshold"):
        AdaptivePolicy(threshold=bad)


def test_x0_space_compares_the_denoised_estimates_not_the_noise():
    # At high sigma the noise estimates share the x / sigma term: their cosine is ~1 even
    # when the denoised estimates disagree completely. x0 space sees the disagreement.
    # x at sigma 40 is mostly noise: |x|^2 ~ 40^2 * 192 against |D_c - D_u|^2 = 4 * 192.
    sigma = 40.0
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * sigma
    c = torch.ones(1, 3, 8, 8)
    u = -torch.ones(1, 3, 8, 8)
    eps_run = AdaptivePolicy(threshold=0.99, space="eps").start(10)
    x0_run = AdaptivePolicy(threshold=0.99, space="x0").start(10)
    eps_cos = eps_run.guide(c, u, ctx(0, x, sigma)).metrics["cosine"]
    x0_cos = x0_run.guide(c, u, ctx(0, x, sigma)).metrics["cosine"]
    assert eps_cos.item() > 0.99 and x0_cos.item() == pytest.approx(-1.0)
    assert eps_run.decisions()["switch_step"] == [0] and x0_run.decisions()["switch_step"] == [-1]
    assert AdaptivePolicy(space="x0").settings()["space"] == "x0"
    with pytest.raises(ValueError, match="space"):
        AdaptivePolicy(space="v")
