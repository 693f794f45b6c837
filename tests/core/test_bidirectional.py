"""BDIA and O-BELM (samplers/bidirectional.py) on toy models.

The oracle (algorithms.md): invert, then sample the pair back with the same conditioning,
lands on the start to float64 rounding (max relative error <= 1e-6, in practice ~1e-13),
far below DDIM inversion, for eps, v-prediction and flow models, batch 1 and 3, odd and
even step counts, partial schedules, 4-D and 5-D latents; with gamma = 0 BDIA is DDIM step
for step; O-BELM is second order.
"""

import math

import pytest
import torch

from guidance_lab.guiders import CFGPolicy
from guidance_lab.guiders.apg import APGPolicy
from guidance_lab.samplers import SAMPLERS
from guidance_lab.samplers.bidirectional import (EDIT_GAMMA, METHODS, Words, _add, _two_prod,
                                                 bidirectional_inverse_step, bidirectional_step, check_schedule,
                                                 inversion_gain, off_tie, rule_for, sample_bidirectional,
                                                 sample_bidirectional_inversion)

from .test_edict import SHAPE, MixtureToy, ddim_round_trip, model_for, schedule
from .toy import PolicyModel


def invert(toy, x, sigmas, method, gamma=EDIT_GAMMA, state_dtype=torch.float64, model_dtype=None, policy=None):
    """The inverted pair (z_0, z_1, low word of z_0, low word of z_1) and the model that ran."""
    inv = {}
    model = PolicyModel(policy or CFGPolicy(3.0), toy, len(sigmas) - 1)
    sample_bidirectional_inversion(model, x, sigmas.flip(0), callback=model.step_done, method=method, gamma=gamma,
                                   state_dtype=state_dtype, result=inv, model_dtype=model_dtype, family=toy.family)
    return inv["pair"] + inv["pair_low"], model


def sample_pair(toy, x, sigmas, pair, method, gamma=EDIT_GAMMA, model_dtype=None, policy=None):
    """The pair sampled back down ``sigmas`` (steps 1 .. n-1); the final state and the model."""
    out = {}
    model = PolicyModel(policy or CFGPolicy(3.0), toy, len(sigmas) - 2)
    sample_bidirectional(model, x, sigmas[1:], callback=model.step_done, method=method, gamma=gamma,
                         above=pair[0], above_sigma=float(sigmas[0]), start=pair[1], result=out,
                         model_dtype=model_dtype, above_low=pair[2], start_low=pair[3], family=toy.family)
    return out["pair"][1], model


def relative_round_trip(toy, latent, sigmas, method, state_dtype=torch.float64, model_dtype=None, policy=None):
    """max |sample(invert(latent)) - latent| / max |latent|, in the state's dtype."""
    x = latent.to(model_dtype or latent.dtype)
    pair, _ = invert(toy, x, sigmas, method, state_dtype=state_dtype, model_dtype=model_dtype, policy=policy)
    back, _ = sample_pair(toy, x, sigmas, pair, method, model_dtype=model_dtype, policy=policy)
    return ((back.double() - latent.double()).abs().max() / latent.double().abs().max()).item()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("prediction", ["eps", "v", "flow"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("steps", [5, 6, 49, 50])
def test_round_trip_is_exact_and_far_below_ddim_inversion(method, prediction, batch, steps):
    toy = MixtureToy(prediction, batch)
    latent, sigmas = toy.sample_data(), schedule(prediction, steps)
    err = relative_round_trip(toy, latent, sigmas, method)
    assert err <= 1e-6, err
    ddim = ddim_round_trip(toy, latent, sigmas) / latent.abs().max().item()
    assert ddim > 1000 * err, (ddim, err)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("prediction", ["eps", "v", "flow"])
@pytest.mark.parametrize("start", [10, 37])
def test_partial_schedule_round_trips_exactly(method, prediction, start):
    """An edit strength: the schedule's tail from step ``start`` (BasicScheduler's denoise < 1)."""
    toy = MixtureToy(prediction, 3)
    sigmas = schedule(prediction, 50)[start:]
    assert relative_round_trip(toy, toy.sample_data(), sigmas, method) <= 1e-6


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("prediction", ["eps", "flow"])
def test_video_latents_round_trip_exactly(method, prediction):
    """5-D latents [batch, channels, frames, height, width] (Wan, Hunyuan video)."""
    toy = MixtureToy(prediction, 2)
    g = torch.Generator().manual_seed(5)
    toy.cond_means = 1.0 + 0.5 * torch.rand(2, 4, 3, 6, 10, generator=g, dtype=torch.float64)
    toy.uncond_means = 0.3 + 0.5 * torch.rand(2, 4, 3, 6, 10, generator=g, dtype=torch.float64)
    latent = toy.sample_data()
    assert latent.ndim == 5
    assert relative_round_trip(toy, latent, schedule(prediction, 9), method) <= 1e-6


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", ["uniform", "random"])
def test_non_uniform_and_uniform_schedules_round_trip_exactly(method, shape):
    steps = 12
    if shape == "uniform":
        sigmas = torch.linspace(10.0, 0.0, steps + 1)
    else:  # random descending step sizes spanning two orders of magnitude
        sizes = torch.exp(4 * torch.rand(steps, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
        sigmas = torch.cat([sizes.flip(0).cumsum(0).flip(0), torch.zeros(1, dtype=torch.float64)]).float()
    toy = MixtureToy("eps", 3)
    assert relative_round_trip(toy, toy.sample_data(), sigmas, method) <= 1e-6


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("prediction", ["eps", "flow"])
def test_model_in_float32_keeps_the_float64_round_trip_exact(method, prediction):
    toy = MixtureToy(prediction, 3)
    err = relative_round_trip(toy, toy.sample_data(), schedule(prediction, 25), method, model_dtype=torch.float32)
    assert err <= 1e-6, err


@pytest.mark.parametrize("method", METHODS)
def test_float32_state_is_close_but_not_exact(method):
    toy = MixtureToy("eps", 3)
    latent, sigmas = toy.sample_data(), schedule("eps", 50)
    err32 = relative_round_trip(toy, latent, sigmas, method, torch.float32, torch.float32)
    err64 = relative_round_trip(toy, latent, sigmas, method)
    assert err64 < err32 < 1e-3, (err64, err32)


def test_flow_pair_starts_at_sigma_one_and_is_finite():
    """The flow family's sigma-1 end: nothing divides by 1 - sigma (the round trips above start there)."""
    toy = MixtureToy("flow", 3)
    sigmas, latent = schedule("flow", 8), toy.sample_data()
    assert float(sigmas[0]) == 1.0
    for method in METHODS:
        (upper, lower, _, _), _ = invert(toy, latent, sigmas, method)
        assert torch.isfinite(upper).all() and torch.isfinite(lower).all()
        assert (upper - latent).abs().max() > 0.5 and (upper - lower).abs().max() > 0.01


@pytest.mark.parametrize("method", METHODS)
def test_one_evaluation_per_step_never_at_sigma_zero(method):
    toy = MixtureToy("eps", 1)
    seen = []
    estimates = toy.estimates

    def spy(x, sigma):
        seen.append(float(sigma.reshape(-1)[0]))
        return estimates(x, sigma)

    toy.estimates = spy
    sigmas, steps = schedule("eps", 7), 7
    pair, up = invert(toy, toy.sample_data(), sigmas, method)
    assert len(seen) == steps and min(seen) > 0
    sample_pair(toy, toy.sample_data(), sigmas, pair, method)
    assert len(seen) == 2 * steps - 1 and min(seen) > 0  # n up, n - 1 down
    assert up.run.finish().nfe_per_step == [2.0] * steps  # cond + uncond, one evaluation per step


def test_the_registered_samplers_are_the_core_rules_at_their_defaults():
    toy = MixtureToy("eps", 2)
    sigmas = schedule("eps", 6)
    noise = 14.6 * torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(4))
    for name, options in [("o_belm", {}), ("bdia", {"gamma": 0.5})]:
        registered = SAMPLERS[name](model_for(toy, sigmas), noise, sigmas, {}, disable=True)
        core = sample_bidirectional(model_for(toy, sigmas), noise, sigmas, method=name, **options)
        assert torch.equal(registered, core) and torch.isfinite(core).all() and core.dtype == noise.dtype
        assert SAMPLERS[name].evaluations_per_step == 1
    with pytest.raises(ValueError, match="ascending"):
        SAMPLERS["o_belm"](model_for(toy, sigmas), noise, sigmas.flip(0), {})


def test_bdia_with_gamma_zero_is_ddim_step_for_step():
    toy = MixtureToy("flow", 3)
    sigmas = schedule("flow", 12)
    noise = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(1))
    bdia = sample_bidirectional(model_for(toy, sigmas), noise, sigmas, method="bdia", gamma=0.0)
    ddim = SAMPLERS["euler"](model_for(toy, sigmas), noise, sigmas, {}, disable=True)
    # to euler's float32 rounding: BDIA's states are double words, euler's plain float32
    assert (bdia - ddim).abs().max() <= 1e-5 * ddim.abs().max()


@pytest.mark.parametrize("prediction", ["eps", "flow"])
def test_o_belm_samples_closer_to_the_ode_solution_than_euler(prediction):
    """Second order: at 20 steps O-BELM lands nearer a 2000-step Euler reference than Euler does."""
    toy = MixtureToy(prediction, 3)
    top = 1.0 if prediction == "flow" else 14.6
    noise = top * torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    fine = schedule(prediction, 2000).double()
    reference = SAMPLERS["euler"](model_for(toy, fine), noise, fine, {}, disable=True)
    sigmas = schedule(prediction, 20).double()
    euler = (SAMPLERS["euler"](model_for(toy, sigmas), noise, sigmas, {}, disable=True) - reference).abs().max()
    o_belm = (sample_bidirectional(model_for(toy, sigmas), noise, sigmas, method="o_belm", family=toy.family)
              - reference).abs().max()
    assert o_belm < 0.7 * euler, (o_belm, euler)


def test_an_edited_prompt_changes_the_sample_and_the_same_prompt_does_not():
    toy = MixtureToy("eps", 1)
    latent, sigmas = toy.sample_data(), schedule("eps", 20)[6:]
    for method in METHODS:
        pair, _ = invert(toy, latent, sigmas, method)
        edited_toy = MixtureToy("eps", 1, seed=7)
        edited, _ = sample_pair(edited_toy, latent, sigmas, pair, method)
        same, _ = sample_pair(toy, latent, sigmas, pair, method)
        assert (edited - latent).abs().max() > 1e6 * (same - latent).abs().max()


def test_apg_without_momentum_round_trips_exactly():
    toy = MixtureToy("v", 3)
    policy = APGPolicy(scale=5.0, eta=0.0, norm_threshold=2.0, momentum=0.0)
    for method in METHODS:
        assert relative_round_trip(toy, toy.sample_data(), schedule("v", 9), method, policy=policy) <= 1e-6


def test_steps_and_their_inverses_undo_each_other():
    g = torch.Generator().manual_seed(0)
    z_prev, z, f = (torch.randn(2, 3, generator=g, dtype=torch.float64) for _ in range(3))
    for a, h_prev, h_next in [(0.96, -0.7, -0.5), (2.25, -0.02, -0.03), (1.0, -1.0, -1.0)]:
        z_next = bidirectional_step(Words.of(z_prev), Words.of(z), f, a, h_prev, h_next)
        back = bidirectional_inverse_step(z_next, Words.of(z), f, a, h_prev, h_next)
        # in double words the inverse undoes the step far below float64 rounding
        assert ((back.hi - z_prev) + back.lo).abs().max() <= 1e-28
        # expanded form: a z_{k-1} + (1 - a) z_k + (h_next + a h_prev) f_k
        assert torch.allclose(z_next.hi, a * z_prev + (1 - a) * z + (h_next + a * h_prev) * f, atol=1e-14)


def test_double_words_are_exact_where_float64_rounds():
    """TwoSum and TwoProduct keep what float64 drops: 1e16 + 1 - 1e16 is 1, 0.1 * 3 is 0.3 exactly."""
    big = Words.of(torch.tensor([1e16], dtype=torch.float64))
    total = _add(big, Words.of(torch.tensor([1.0], dtype=torch.float64)))
    assert total.hi.item() == 1e16 and total.lo.item() == 1.0
    product = _two_prod(torch.tensor([0.1], dtype=torch.float64), 3.0)
    from fractions import Fraction

    assert Fraction(product.hi.item()) + Fraction(product.lo.item()) == Fraction(0.1) * 3


def test_the_first_guess_moves_off_ties_of_compute_dtypes_only():
    """A quarter ulp above the network dtype's number; fp8 weights are not a compute dtype
    (the network casts them up), so the guess is left alone instead of failing in nextafter."""
    t = torch.tensor([1.0 + 2.0 ** -11], dtype=torch.float64)  # a tie between two float16 numbers
    moved = off_tie(t, torch.float16)
    assert moved.item() == 1.0 + 0.25 * 2.0 ** -10 and moved.to(torch.float16).item() == 1.0
    assert off_tie(t, torch.float64) is t and off_tie(t, torch.float8_e4m3fn) is t


def test_weights_and_the_inversion_gain():
    o_belm, bdia = rule_for("o_belm"), rule_for("bdia", 0.9)
    assert o_belm.weight(3.0, 2.0, 1.0) == 1.0 and o_belm.weight(4.0, 2.0, 1.0) == 0.25  # leapfrog on a uniform grid
    assert math.isclose(bdia.weight(4.0, 2.0, 1.0), 0.9 * math.sqrt(2 / 17))  # gamma alpha(4) / alpha(1)
    assert rule_for("bdia", 0.9, family="flow").weight(0.9, 0.5, 0.1) == 0.9
    sigmas = schedule("eps", 10).tolist()
    alpha = [1 / math.sqrt(1 + s * s) for s in sigmas]
    # the alpha ratios telescope: the states' own growth from the bottom pair to the top pair
    assert math.isclose(inversion_gain(sigmas, bdia), 0.9 ** -9 * alpha[-1] * alpha[-2] / (alpha[0] * alpha[1]))
    first, last = sigmas[1] - sigmas[0], sigmas[-1] - sigmas[-2]
    assert math.isclose(inversion_gain(sigmas, o_belm), (first / last) ** 2)  # the ratios telescope


def test_bdia_on_eps_models_is_the_papers_rule_on_the_vp_states():
    """BDIA-DDIM as the paper writes it, on VP states x = alpha z (alpha = 1 / sqrt(1 + s^2)):
    x_{i-1} = x_{i+1} - (1 - gamma)(x_{i+1} - x_i) - gamma Delta(t_i -> t_{i+1} | x_i)
    + Delta(t_i -> t_{i-1} | x_i), Delta the DDIM increment; one step of (B) with the rule's
    weight on ComfyUI's states z is that step, divided by the new state's alpha."""
    g = torch.Generator().manual_seed(3)
    z_prev, z, f = (torch.randn(2, 3, generator=g, dtype=torch.float64) for _ in range(3))
    gamma, (s_prev, s, s_next) = 0.9, (80.0, 6.0, 1.5)
    alpha = lambda t: 1 / math.sqrt(1 + t * t)

    def delta(x, t_from, t_to):  # DDIM increment of the VP state x at t_from (its eps estimate is f)
        x0 = x / alpha(t_from) - t_from * f
        return alpha(t_to) * (x0 + t_to * f) - x

    x_prev, x = alpha(s_prev) * z_prev, alpha(s) * z
    paper = x_prev - (1 - gamma) * (x_prev - x) - gamma * delta(x, s, s_prev) + delta(x, s, s_next)
    a = rule_for("bdia", gamma).weight(s_prev, s, s_next)
    ours = bidirectional_step(Words.of(z_prev), Words.of(z), f, a, s - s_prev, s_next - s).hi
    torch.testing.assert_close(ours * alpha(s_next), paper, rtol=1e-12, atol=1e-12)


def test_o_belms_weight_is_capped_at_one_where_the_steps_grow():
    """(B)'s parasitic root is -a: O-BELM's (h_next / h_prev)^2 above 1 would grow the pair's
    difference mode, so it is capped at 1 (O_BELM_MAX_WEIGHT); shrinking steps keep the paper's."""
    o_belm, flow = rule_for("o_belm"), rule_for("o_belm", family="flow")
    assert o_belm.weight(3.0, 2.5, 1.0) == 1.0  # (1.5 / 0.5)^2 = 9
    assert o_belm.weight(4.0, 2.0, 1.5) == 0.0625
    assert flow.weight(1.0, 0.99, 0.9) == 1.0  # the step after a flow schedule's top, in s: 81
    assert flow.weight(0.5, 0.4, 0.39) < 1.0  # shrinking steps in BELM's variables: its own weight
    growing = [4518.8, 38.2, 17.1, 0.37, 0.241, 0.029, 0.0]  # the v-prediction model's kind of tail
    assert max(o_belm.weight(*growing[k - 1:k + 2]) for k in range(1, len(growing) - 1)) == 1.0


def test_o_belm_weighs_flow_steps_in_belms_variables():
    """(B-flow): on a flow model O-BELM's weight is the paper's, in sb = s / (1 - s), carried to the
    flow state by (1 - s_{k+1}) / (1 - s_{k-1}); on a uniform schedule that is (k - 1) / (k + 1),
    which damps the pair's difference mode where the weight in s (1, leapfrog) would not."""
    flow, n = rule_for("o_belm", family="flow"), 20
    sigmas = [1 - k / n for k in range(n + 1)]
    for k in range(2, n):
        assert math.isclose(flow.weight(*sigmas[k - 1:k + 2]), (k - 1) / (k + 1))
        assert math.isclose(rule_for("o_belm").weight(*sigmas[k - 1:k + 2]), 1.0)
    # at the top (s = 1, sb infinite) the weight in s: finite and invertible
    assert math.isclose(flow.weight(*sigmas[0:3]), 1.0)
    assert math.isclose(inversion_gain(sigmas, flow), n * (n - 1) / 2)
    # the same map as the rule written in xb = z / (1 - s), sb: one step from arbitrary states
    g = torch.Generator().manual_seed(5)
    z_prev, z, f = (torch.randn(4, generator=g, dtype=torch.float64) for _ in range(3))
    s_prev, s, s_next = 0.8, 0.55, 0.3
    z_next = bidirectional_step(Words.of(z_prev), Words.of(z), f, flow.weight(s_prev, s, s_next), s - s_prev,
                                s_next - s).hi
    sb = [t / (1 - t) for t in (s_prev, s, s_next)]
    xb_prev, xb = z_prev / (1 - s_prev), z / (1 - s)
    eps = z + (1 - s) * f  # the noise estimate a flow velocity f implies at state z
    a = ((sb[2] - sb[1]) / (sb[1] - sb[0])) ** 2
    paper = (xb + (sb[2] - sb[1]) * eps) + a * (xb_prev - (xb - (sb[1] - sb[0]) * eps))
    assert torch.allclose(z_next, (1 - s_next) * paper, rtol=0, atol=1e-13)
    with pytest.raises(ValueError, match="family"):
        rule_for("o_belm", family="v")


@pytest.mark.parametrize("gamma", [0.0, -0.1, 1.01, math.nan, "0.9", True])
def test_gamma_outside_zero_one_is_refused_for_inversion(gamma):
    with pytest.raises(ValueError, match="gamma must be strictly above 0"):
        rule_for("bdia", gamma)


def test_gamma_zero_is_allowed_for_plain_sampling_and_unknown_methods_are_refused():
    assert rule_for("bdia", 0.0, invertible=False).gamma == 0.0
    with pytest.raises(ValueError, match="unknown method"):
        rule_for("belm")


@pytest.mark.parametrize("sigmas, problem", [
    ([], "0 step"), ([14.6, 0.0], "1 step"), ([0.0, 1.0, 14.6], "ascending"), ([14.6, 1.0, 1.0, 0.0], "repeats"),
    ([14.6, 0.0, 0.0], "before its last"), ([3.0, 1.0, -0.1], "negative"), ([math.inf, 1.0, 0.0], "finite"),
])
def test_bad_schedules_are_refused(sigmas, problem):
    with pytest.raises(ValueError, match=problem):
        check_schedule(sigmas)
