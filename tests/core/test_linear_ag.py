import pytest
import torch

from guidance_lab.guiders import CFGPolicy, GuidedRun
from guidance_lab.guiders.linear_ag import (CalibrationPolicy, LinearAGPolicy, NormalEquations,
                                            evaluated_steps, features, guided_step_count, history_lags)
from guidance_lab.samplers.euler import to_d

from .toy import toy_denoiser

SIGMAS = torch.tensor([14.0, 8.0, 4.0, 2.0, 1.0, 0.5, 0.2, 0.0])


def run_euler(policy, x, means=(1.0, -1.0), sigmas=SIGMAS):
    """Euler through a GuidedRun with a toy cond/uncond pair, as the host guider would."""
    run = GuidedRun(policy, len(sigmas) - 1, x.shape[0])
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i].repeat(x.shape[0])

        def evaluate(need_uncond):
            run.count_evaluations(x.shape[0] * (2 if need_uncond else 1))
            cond = toy_denoiser(x, sigma, means[0])
            return cond, (toy_denoiser(x, sigma, means[1]) if need_uncond else None)

        _, guided = run.denoise(x, sigma, evaluate)
        x = x + to_d(x, sigmas[i], guided.denoised) * (sigmas[i + 1] - sigmas[i])
        run.step_done(i)
    return x, run.finish()


def test_ridge_fit_recovers_an_exact_affine_relation():
    eq = NormalEquations(1)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x, eps_c = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
        prev_c, prev_u = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
        h = features(x, torch.tensor([1.0, 1.0]), eps_c, prev_c, prev_u)
        y = h @ torch.tensor([0.8, 0.1, -0.2, 0.3, 0.05], dtype=torch.float64)
        eq.add(0, h, y)
    coef, rel = eq.solve(ridge=1e-10)
    assert torch.allclose(coef[0], torch.tensor([0.8, 0.1, -0.2, 0.3, 0.05], dtype=torch.float64), atol=1e-6)
    assert rel[0] < 1e-6


def test_calibrated_linear_ag_reproduces_cfg_with_fewer_evaluations():
    g = torch.Generator().manual_seed(1)
    eq = NormalEquations(len(SIGMAS) - 1)
    for _ in range(3):  # calibration seeds
        run_euler(CalibrationPolicy(5.0, eq), torch.randn(2, 3, 4, 4, generator=g) * 14)
    _, rel = eq.solve(ridge=1e-8)
    assert float(rel[1:].max()) < 1e-3  # the toy's eps_u is affine in eps_c: fitted exactly
    x = torch.randn(2, 3, 4, 4, generator=g) * 14  # a seed not used for calibration
    reference, cfg_record = run_euler(CFGPolicy(5.0), x.clone())
    steps = evaluated_steps(len(SIGMAS) - 1, warmup=1, every=0)
    coef, _ = eq.solve(1e-8, history_lags(len(SIGMAS) - 1, steps))
    got, record = run_euler(LinearAGPolicy(5.0, coef, frozenset(steps)), x.clone())
    assert torch.allclose(got, reference, atol=1e-3, rtol=1e-3)
    assert record.total_nfe == cfg_record.total_nfe - 2 * (len(SIGMAS) - 2)
    assert record.decisions["uncond_estimated_evaluations"] == len(SIGMAS) - 2


def test_evaluated_steps_schedule():
    assert evaluated_steps(20, warmup=2, every=5) == [0, 1, 5, 10, 15]
    assert evaluated_steps(4, warmup=1, every=0) == [0]
    assert evaluated_steps(20, warmup=2, every=5, guided_steps=10) == [0, 1, 5]


def test_policy_must_evaluate_the_first_step():
    with pytest.raises(ValueError, match="step 0"):
        LinearAGPolicy(5.0, torch.zeros(4, 5), frozenset({1}))


def test_missing_calibration_steps_are_reported():
    with pytest.raises(ValueError, match="no calibration data"):
        NormalEquations(3).solve(1e-6)


def test_guided_steps_end_guidance_with_conditional_only_steps():
    """LinearAG over the first steps, then Euler on D_c alone, against the two pieces run apart."""
    g = torch.Generator().manual_seed(2)
    coef = torch.randn(len(SIGMAS) - 1, 5, generator=g, dtype=torch.float64) * 0.3
    x = torch.randn(3, 3, 4, 5, generator=g) * 14
    guided_steps, evaluate_at = 3, frozenset({0, 2})
    got, record = run_euler(LinearAGPolicy(5.0, coef, evaluate_at, guided_steps=guided_steps), x.clone())
    # Reference: the same policy on the first three steps' schedule, then conditional-only Euler.
    ref, _ = run_euler(LinearAGPolicy(5.0, coef[:guided_steps], evaluate_at), x.clone(),
                       sigmas=SIGMAS[:guided_steps + 1])
    for i in range(guided_steps, len(SIGMAS) - 1):
        sigma = SIGMAS[i].repeat(ref.shape[0])
        ref = ref + to_d(ref, SIGMAS[i], toy_denoiser(ref, sigma, 1.0)) * (SIGMAS[i + 1] - SIGMAS[i])
    assert torch.equal(got, ref)
    batch, steps = x.shape[0], len(SIGMAS) - 1
    assert record.total_nfe == batch * (steps + len(evaluate_at))
    assert record.decisions["uncond_estimated_evaluations"] == 1  # step 1 only
    assert record.decisions["guided_steps"] == guided_steps


def test_guidance_end_fraction_to_steps():
    assert guided_step_count(20, 1.0) is None
    assert guided_step_count(20, 0.5) == 10
    assert guided_step_count(3, 0.05) == 1  # step 0 is always guided
    with pytest.raises(ValueError, match="guidance_end"):
        guided_step_count(20, 0.0)
    with pytest.raises(ValueError, match="guide at least step 0"):
        LinearAGPolicy(5.0, torch.zeros(4, 5), frozenset({0}), guided_steps=0)


def test_history_lags_count_back_to_the_last_real_evaluation():
    assert history_lags(8, {0, 3}) == [1, 1, 2, 1, 1, 2, 3, 4]
    assert history_lags(3, {0, 1, 2}) == [1, 1, 1]


def test_each_step_is_fitted_at_the_lag_its_schedule_gives():
    """Sums recorded per (step, lag): a solve for a schedule picks each step's own lag."""
    steps, g = 4, torch.Generator().manual_seed(3)
    eq = NormalEquations(steps)
    truths = {lag: torch.randn(5, generator=g, dtype=torch.float64) for lag in (1, 2, 3)}
    for t in range(steps):
        for lag in range(1, max(t, 1) + 1):
            h = torch.randn(64, 5, generator=g, dtype=torch.float64)
            eq.add(t, h, h @ truths[lag], lag)
    coef, rel = eq.solve(0.0, [1, 1, 2, 3])
    for t, lag in enumerate([1, 1, 2, 3]):
        torch.testing.assert_close(coef[t], truths[lag])
    assert float(rel.max()) < 1e-6
    with pytest.raises(ValueError, match="more than 3 steps after the last evaluated one"):
        eq.solve(0.0, [1, 1, 1, 4])


def test_predictions_use_the_last_real_evaluation_not_earlier_predictions():
    """Against a direct computation: at a predicted step the history is eps_c and eps_u of the
    last evaluated step, whatever was predicted in between."""
    g = torch.Generator().manual_seed(4)
    steps, evaluate_at = len(SIGMAS) - 1, frozenset({0, 4})
    coef = torch.randn(steps, 5, generator=g, dtype=torch.float64) * 0.3
    x = torch.randn(2, 3, 4, 4, generator=g) * 14
    got, _ = run_euler(LinearAGPolicy(5.0, coef, evaluate_at), x.clone())
    ref, hist = x.clone(), None
    for i in range(steps):
        sigma = SIGMAS[i].repeat(ref.shape[0])
        cond = toy_denoiser(ref, sigma, 1.0)
        eps_c = (ref - cond) / SIGMAS[i]
        if i in evaluate_at:
            uncond = toy_denoiser(ref, sigma, -1.0)
            hist = (eps_c, (ref - uncond) / SIGMAS[i])
        else:
            s = SIGMAS[i]
            cols = [eps_c, ref / torch.sqrt(1 + s**2), hist[0], hist[1], torch.ones_like(ref)]
            eps_u = sum(float(coef[i, j]) * c.double() for j, c in enumerate(cols)).float()
            uncond = ref - s * eps_u
        guided = uncond + (cond - uncond) * 5.0
        ref = ref + to_d(ref, SIGMAS[i], guided) * (SIGMAS[i + 1] - SIGMAS[i])
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-4)
