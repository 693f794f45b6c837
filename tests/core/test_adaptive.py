import pytest
import torch

from guidance_lab.guiders import CFGPolicy, Guided, GuidedRun, StepContext, cfg
from guidance_lab.guiders.adaptive import AdaptivePolicy, cosine_per_sample, guidance_agreement
from guidance_lab.guiders.apg import APGPolicy
from guidance_lab.guiders.linear_ag import LinearAGPolicy
from guidance_lab.samplers.sigma_space import noise_from_denoised

from .toy import mixed_pair, sample_policy


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
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 4, 4, generator=g) * 3
    c = torch.randn(2, 4, 4, 4, generator=g)
    u = c + 1e-3 * torch.randn(2, 4, 4, 4, generator=g)  # sample 0 agrees, yet D_u != D_c
    u[1] = torch.randn(4, 4, 4, generator=g)  # sample 1 does not
    run = AdaptivePolicy(threshold=0.99, inner=CFGPolicy(5.0)).start(10)
    first = run.guide(c, u, ctx(0, x))
    assert torch.equal(first.denoised, cfg(c, u, 5.0))  # the crossing step still uses CFG
    assert torch.equal(first.uncond, u)  # ... and hands D_u on to CFG++
    u2 = torch.randn(2, 4, 4, 4, generator=g)  # sample 0's D_u now disagrees: it must not matter
    second = run.guide(c, u2, ctx(1, x))
    assert torch.equal(second.denoised[0], c[0]) and torch.equal(second.denoised[1], cfg(c, u2, 5.0)[1])
    # Per sample: the switched sample hands D_c on to CFG++, as it would alone.
    assert torch.equal(second.uncond[0], c[0]) and torch.equal(second.uncond[1], u2[1])
    assert run.needs_uncond(ctx(2, x))  # sample 1 still needs it
    run.guide(c, c, ctx(2, x))  # now sample 1 agrees too
    assert not run.needs_uncond(ctx(3, x))
    last = run.guide(c, None, ctx(3, x))
    assert torch.equal(last.denoised, c) and torch.equal(last.renoise_uncond(c), c)
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


# --- Adaptive Guidance against the paper's update, run by the pack's samplers -------------

SIGMAS = {"eps": torch.tensor([14.0, 8.0, 5.0, 3.0, 2.0, 1.2, 0.7, 0.4, 0.2, 0.08, 0.0], dtype=torch.float64),
          "flow": torch.tensor([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0], dtype=torch.float64)}
SCALE = {"euler": 3.0, "euler_cfg_pp": 0.8}  # CFG's w; CFG++'s lambda


def initial_state(family, sigma_max=None):
    """Pure noise at the schedule's first sigma: sigma_max * z for eps, z for flow models."""
    x = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return x if family == "flow" else x * float(SIGMAS["eps"][0] if sigma_max is None else sigma_max)


def reference_gamma(space, x, sigma, c, u, family):
    """gamma_t (Eq. 6) for one sample, written out in float64."""
    a = 1 - sigma if family == "flow" else 1.0
    if space == "eps":
        c, u = (x - a * c) / sigma, (x - a * u) / sigma
    if space in ("eps", "x0"):
        return float((c * u).sum() / (c.norm() * u.norm()))
    return float(1 - (c - u).square().sum() / (2 * c.square().sum()))


def reference_ag(pair, x, sigmas, sampler, scale, threshold, space):
    """AG over CFG for one sample, from the paper: CFG up to and including the step whose
    gamma_t exceeds the threshold, D_c after it. Euler steps x' = x + (s' - s)(x - D)/s;
    CFG++ re-noises with eps_u while guided, with eps_c once conditional-only.
    Returns the final state, the switch step (-1: never) and the closest gamma_t came to
    the threshold (so that float32 rounding cannot flip a decision)."""
    switch, margin = -1, float("inf")
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        c, u = pair.estimates(x, torch.tensor([s], dtype=torch.float64))
        if switch >= 0:
            d, renoise = c, c
        else:
            d, renoise = u + scale * (c - u), u
            gamma = reference_gamma(space, x, s, c, u, pair.family)
            margin = min(margin, abs(gamma - threshold))
            switch = i if gamma > threshold else -1
        a, a_next = (1 - s, 1 - s_next) if pair.family == "flow" else (1.0, 1.0)
        if sampler == "euler":
            x = x + (s_next - s) * (x - d) / s
        else:
            x = d if s_next == 0 else a_next * d + s_next * (x - a * renoise) / s
    return x, switch, margin


@pytest.mark.parametrize("space", ["auto", "x0", "eps"])
@pytest.mark.parametrize("family", ["eps", "flow"])
@pytest.mark.parametrize("sampler", ["euler", "euler_cfg_pp"])
def test_each_sample_follows_the_papers_update_alone_and_in_a_mixed_batch(sampler, family, space):
    """Fails for an AG that keeps guiding a switched sample, one that drops guidance
    already at the crossing step, and one that hands CFG++ zeros for skipped uncond: the
    toy's D_u differs from D_c at every step, so each of them changes the numbers."""
    threshold, scale = 0.999, SCALE[sampler]
    pair, x = mixed_pair(family), initial_state(family)
    policy = AdaptivePolicy(threshold, CFGPolicy(scale), space=space)
    batch, record = sample_policy(policy, pair, x.clone(), SIGMAS[family], sampler)
    expected_switch = []
    for i in range(3):
        one = slice(i, i + 1)
        ref, switch, margin = reference_ag(pair[one], x[one], SIGMAS[family], sampler, scale, threshold,
                                           "guidance" if space == "auto" else space)
        assert margin > 1e-5
        expected_switch.append(switch)
        alone, alone_record = sample_policy(policy, pair[one], x[one].clone(), SIGMAS[family], sampler)
        assert alone_record.decisions["switch_step"] == [switch]
        assert torch.allclose(alone, ref, rtol=1e-9, atol=1e-9), f"sample {i} alone"
        assert torch.allclose(batch[one], ref, rtol=1e-9, atol=1e-9), f"sample {i} in the batch"
    assert record.decisions["switch_step"] == expected_switch
    if not (space == "eps" and family == "flow"):  # there every sample switches at step 0 (the trap)
        first = min(s for s in expected_switch if s >= 0)
        assert first < len(SIGMAS[family]) - 2 and any(s == -1 or s > first for s in expected_switch)


def test_conditional_only_samples_hand_d_c_to_cfg_pp_never_zeros():
    """Alone, a switched sample skips uncond: CFG++ must re-noise it with D_c."""
    pair, x = mixed_pair("eps")[1:2], initial_state("eps")[1:2]
    policy = AdaptivePolicy(0.999, CFGPolicy(0.8))
    out, record = sample_policy(policy, pair, x.clone(), SIGMAS["eps"], "euler_cfg_pp")
    assert 0 <= record.decisions["switch_step"][0] < len(SIGMAS["eps"]) - 2  # steps without uncond follow
    ref, _, _ = reference_ag(pair, x, SIGMAS["eps"], "euler_cfg_pp", 0.8, 0.999, "guidance")
    assert torch.allclose(out, ref, rtol=1e-9, atol=1e-9)
    c = torch.randn(1, 3, 4, 4)
    assert torch.equal(Guided(c, None).renoise_uncond(c), c)


def test_before_the_switch_it_is_exactly_the_inner_policy_even_when_uncond_is_predicted():
    """AG over LinearAG: on a step where LinearAG predicts uncond, AG must still guide."""
    coef = torch.tensor([0.9, 0.05, 0.1, -0.05, 0.01], dtype=torch.float64).repeat(10, 1)
    inner = LinearAGPolicy(3.0, coef, frozenset({0, 4}))
    pair, x = mixed_pair("eps"), initial_state("eps")
    expected, _ = sample_policy(inner, pair, x.clone(), SIGMAS["eps"], "euler")
    got, record = sample_policy(AdaptivePolicy(1.0, inner), pair, x.clone(), SIGMAS["eps"], "euler")
    assert torch.equal(got, expected) and record.decisions["switch_step"] == [-1, -1, -1]
    assert record.nfe_per_step == [2.0, 1.0, 1.0, 1.0, 2.0] + [1.0] * 5


# --- The criterion on flow models and at high sigma_max ---------------------------------

def test_eps_reading_is_blind_at_sigma_one_on_flow_models():
    """The trap: at sigma = 1 a flow model's noise estimate is the state itself, whatever
    D is, so the eps cosine is 1 however much cond and uncond disagree."""
    pair, x = mixed_pair("flow"), initial_state("flow")
    sigma = torch.ones(3, dtype=torch.float64)
    c, u = pair.estimates(x, sigma)
    step = StepContext(0, 10, x, sigma, family="flow")
    assert torch.equal(noise_from_denoised(x, c, sigma, "flow"), x)
    assert AdaptivePolicy(0.999, space="eps").start(10).guide(c, u, step).metrics["cosine"].min() > 0.999999
    assert AdaptivePolicy(0.999).start(10).guide(c, u, step).metrics["cosine"].max() < 0.999


@pytest.mark.parametrize("family, sigmas", [
    ("flow", SIGMAS["flow"]),
    # zero-terminal-SNR eps and v models (ComfyUI samples v as x = x0 + sigma eps): sigma_max ~ 4000
    ("eps", torch.tensor([4000.0, 200.0, 14.0, 5.0, 2.0, 1.0, 0.5, 0.2, 0.08, 0.0], dtype=torch.float64)),
])
def test_default_criterion_does_not_switch_at_step_0_where_the_eps_reading_does(family, sigmas):
    pair, x = mixed_pair(family), initial_state(family, float(sigmas[0]))

    def run(space):
        policy = AdaptivePolicy(0.999, CFGPolicy(3.0), space=space)
        return sample_policy(policy, pair, x.clone(), sigmas, "euler")[1]

    default, paper = run("auto"), run("eps")
    assert default.decisions["space"] == "guidance"
    assert paper.decisions["switch_step"] == [0, 0, 0]
    steps = default.decisions["switch_step"]
    assert all(s > 0 for s in steps)  # no silent no-op ...
    assert any(0 < s < len(sigmas) - 2 for s in steps)  # ... and a switch that saves evaluations
    assert default.total_nfe < 3 * 2 * (len(sigmas) - 1)


def test_guidance_agreement_is_the_cosine_for_equal_norms_and_counts_norm_mismatch():
    g = torch.Generator().manual_seed(3)
    c = torch.randn(2, 3, 8, 8, generator=g)
    u = torch.randn(2, 3, 8, 8, generator=g)
    u = u / u.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1) * c.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
    assert torch.allclose(guidance_agreement(c, u), cosine_per_sample(c, u), atol=1e-6)
    # Same direction, half the norm: a cosine calls it agreement, CFG would double D_c's contrast.
    assert cosine_per_sample(c, 0.5 * c).min() > 0.9999
    assert torch.allclose(guidance_agreement(c, 0.5 * c), torch.full((2,), 0.875))
    assert AdaptivePolicy().space == "auto"
    assert AdaptivePolicy(space="guidance").settings()["space"] == "guidance"
