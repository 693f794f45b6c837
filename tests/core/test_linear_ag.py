import pytest
import torch

from guidance_lab.guiders import CFGPolicy, GuidedRun
from guidance_lab.guiders.linear_ag import (CalibrationPolicy, LinearAGPolicy, NormalEquations,
                                            evaluated_steps, features)
from guidance_lab.samplers.euler import to_d

from .toy import toy_denoiser

SIGMAS = torch.tensor([14.0, 8.0, 4.0, 2.0, 1.0, 0.5, 0.2, 0.0])


def run_euler(policy, x, means=(1.0, -1.0)):
    """Euler through a GuidedRun with a toy cond/uncond pair, as the host guider would."""
    run = GuidedRun(policy, len(SIGMAS) - 1, x.shape[0])
    for i in range(len(SIGMAS) - 1):
        sigma = SIGMAS[i].repeat(x.shape[0])

        def evaluate(need_uncond):
            run.count_evaluations(x.shape[0] * (2 if need_uncond else 1))
            cond = toy_denoiser(x, sigma, means[0])
            return cond, (toy_denoiser(x, sigma, means[1]) if need_uncond else None)

        _, guided = run.denoise(x, sigma, evaluate)
        x = x + to_d(x, SIGMAS[i], guided.denoised) * (SIGMAS[i + 1] - SIGMAS[i])
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
    coef, rel = eq.solve(ridge=1e-8)
    assert float(rel[1:].max()) < 1e-3  # the toy's eps_u is affine in eps_c: fitted exactly
    x = torch.randn(2, 3, 4, 4, generator=g) * 14  # a seed not used for calibration
    reference, cfg_record = run_euler(CFGPolicy(5.0), x.clone())
    steps = evaluated_steps(len(SIGMAS) - 1, warmup=1, every=0)
    got, record = run_euler(LinearAGPolicy(5.0, coef, frozenset(steps)), x.clone())
    assert torch.allclose(got, reference, atol=1e-3, rtol=1e-3)
    assert record.total_nfe == cfg_record.total_nfe - 2 * (len(SIGMAS) - 2)
    assert record.decisions["uncond_estimated_evaluations"] == len(SIGMAS) - 2


def test_evaluated_steps_schedule():
    assert evaluated_steps(20, warmup=2, every=5) == [0, 1, 5, 10, 15]
    assert evaluated_steps(4, warmup=1, every=0) == [0]


def test_policy_must_evaluate_the_first_step():
    with pytest.raises(ValueError, match="step 0"):
        LinearAGPolicy(5.0, torch.zeros(4, 5), frozenset({1}))


def test_missing_calibration_steps_are_reported():
    with pytest.raises(ValueError, match="no calibration data"):
        NormalEquations(3).solve(1e-6)
