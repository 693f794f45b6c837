"""EDICT (samplers/edict.py) and DDIM inversion (samplers/ddim_inversion.py) on toy models.

The oracle (algorithms.md): invert, then denoise with the same conditioning, lands on the
start to float64 rounding, at least 1000x closer than DDIM inversion on the same model,
schedule and guidance; for eps, v-prediction and flow models, batch 1 and 3, odd and even
step counts, non-square latents.
"""

import math

import pytest
import torch

from guidance_lab.guiders import CFGPolicy
from guidance_lab.guiders.adaptive import AdaptivePolicy
from guidance_lab.guiders.apg import APGPolicy
from guidance_lab.guiders.linear_ag import LinearAGPolicy
from guidance_lab.samplers import SAMPLERS, edict
from guidance_lab.samplers.edict import (check_invertible, check_mixing_weight, check_schedule,
                                         sample_edict, sample_edict_inversion)

from .toy import PolicyModel

SHAPE = (4, 6, 10)  # channels, height, width: non-square


class MixtureToy:
    """Per-element two-component Gaussian mixture data (means +-m per condition, std 0.5) with
    its exact, nonlinear x0 estimate, returned through the prediction target of the model
    family ("eps", "v" or "flow") and converted back as ComfyUI does, in the input's dtype."""

    def __init__(self, prediction: str, batch: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.prediction = prediction
        self.family = "flow" if prediction == "flow" else "eps"
        self.cond_means = 1.0 + 0.5 * torch.rand(batch, *SHAPE, generator=g, dtype=torch.float64)
        self.uncond_means = 0.3 + 0.5 * torch.rand(batch, *SHAPE, generator=g, dtype=torch.float64)
        self.std = 0.5

    def __len__(self):
        return self.cond_means.shape[0]

    def sample_data(self, seed: int = 1) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        sign = torch.where(torch.rand(self.cond_means.shape, generator=g, dtype=torch.float64) < 0.5, -1.0, 1.0)
        return sign * self.cond_means + self.std * torch.randn(self.cond_means.shape, generator=g,
                                                               dtype=torch.float64)

    def _x0(self, x, sigma, means):
        s = sigma.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        a = 1 - s if self.family == "flow" else torch.ones_like(s)
        m = means.to(x.dtype)
        var = a**2 * self.std**2 + s**2
        logits = torch.stack([-(x - a * m) ** 2, -(x + a * m) ** 2]) / (2 * var)
        w = torch.softmax(logits, dim=0)
        gain = a * self.std**2 / var
        return w[0] * (m + gain * (x - a * m)) + w[1] * (-m + gain * (x + a * m))

    def _through_target(self, x, sigma, d):
        """The network's target computed from d, and d recovered from it the way ComfyUI does."""
        s = sigma.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        if self.prediction == "v":  # V_PREDICTION.calculate_denoised with sigma_data = 1
            v = (x / (s**2 + 1) - d) * (s**2 + 1) ** 0.5 / s
            return x / (s**2 + 1) - v * s / (s**2 + 1) ** 0.5
        eps = (x - d) / s  # EPS and CONST: D = x - out * sigma
        return x - eps * s

    def estimates(self, x, sigma):
        return tuple(self._through_target(x, sigma, self._x0(x, sigma, m))
                     for m in (self.cond_means, self.uncond_means))


def schedule(prediction: str, steps: int) -> torch.Tensor:
    """Karras sigmas 14.6 -> 0.03 then 0 (eps, v); shifted flow sigmas 1 -> 0 (shift 3)."""
    if prediction == "flow":
        t = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
        return (3 * t / (1 + 2 * t)).float()
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = 0.03 ** (1 / 7), 14.6 ** (1 / 7)
    return torch.cat([(hi + ramp * (lo - hi)) ** 7, torch.zeros(1, dtype=torch.float64)]).float()


def model_for(toy, sigmas, scale=3.0, policy=None):
    return PolicyModel(policy or CFGPolicy(scale), toy, len(sigmas) - 1)


def edict_round_trip(toy, latent, sigmas, p=edict.DEFAULT_P, state_dtype=torch.float64, model_dtype=None):
    """Max abs error of EDICT invert-then-denoise (both sequences), in the state's dtype."""
    x = latent.to(model_dtype or latent.dtype)
    inv, out = {}, {}
    model = model_for(toy, sigmas)
    sample_edict_inversion(model, x, sigmas.flip(0), callback=model.step_done, p=p, state_dtype=state_dtype,
                           result=inv, model_dtype=model_dtype)
    model = model_for(toy, sigmas)
    sample_edict(model, x, sigmas, callback=model.step_done, pair=inv["pair"], p=p, state_dtype=state_dtype,
                 result=out, model_dtype=model_dtype)
    return max((t.double() - latent.double()).abs().max().item() for t in out["pair"])


def ddim_round_trip(toy, latent, sigmas):
    model = model_for(toy, sigmas)
    noise = SAMPLERS["ddim_inversion"](model, latent.clone(), sigmas.flip(0), {}, callback=model.step_done,
                                       disable=True)
    model = model_for(toy, sigmas)
    back = SAMPLERS["euler"](model, noise, sigmas, {}, callback=model.step_done, disable=True)
    return (back - latent).abs().max().item()


@pytest.mark.parametrize("prediction", ["eps", "v", "flow"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("steps", [7, 8, 49, 50])
def test_round_trip_is_exact_and_far_below_ddim_inversion(prediction, batch, steps):
    toy = MixtureToy(prediction, batch)
    latent, sigmas = toy.sample_data(), schedule(prediction, steps)
    err = edict_round_trip(toy, latent, sigmas)
    ddim = ddim_round_trip(toy, latent, sigmas)
    assert err < 1e-6, err
    assert ddim > 1000 * err, (ddim, err)


@pytest.mark.parametrize("prediction", ["eps", "flow"])
@pytest.mark.parametrize("steps", [25, 50])
def test_model_in_float32_keeps_the_float64_round_trip_exact(prediction, steps):
    """A model that takes float32 only (the state cast before it is called); the pair stays float64."""
    toy = MixtureToy(prediction, 3)
    latent = toy.sample_data()
    err = edict_round_trip(toy, latent, schedule(prediction, steps), model_dtype=torch.float32)
    assert err < 1e-6, err


def test_float32_state_is_close_but_not_exact():
    toy = MixtureToy("eps", 3)
    latent, sigmas = toy.sample_data(), schedule("eps", 50)
    err32 = edict_round_trip(toy, latent, sigmas, state_dtype=torch.float32, model_dtype=torch.float32)
    err64 = edict_round_trip(toy, latent, sigmas)
    assert err64 < err32 < 1e-2 and err32 < ddim_round_trip(toy, latent, sigmas) / 10


@pytest.mark.parametrize("p", [0.8, 0.93, 0.99])
def test_round_trip_is_exact_for_usual_mixing_weights(p):
    toy = MixtureToy("v", 1)
    assert edict_round_trip(toy, toy.sample_data(), schedule("v", 31), p=p) < 1e-6


def test_rounding_grows_as_p_falls():
    """Undoing a mixing layer multiplies the x - y difference by 1/p^2: over n steps rounding
    grows like p^(-2n), which is why p stays near 1 and the pair is kept in float64."""
    toy = MixtureToy("eps", 1)
    latent, sigmas = toy.sample_data(), schedule("eps", 50)
    errors = [edict_round_trip(toy, latent, sigmas, p=p) for p in (0.99, 0.8, 0.6)]
    assert errors[0] < errors[1] < errors[2] and errors[2] > 1e-6


@pytest.mark.parametrize("steps", [24, 25])
def test_alternation_keyed_on_the_loop_counter_breaks_odd_step_counts(monkeypatch, steps):
    """The trap: a port that keys the inverse's order on its loop counter j (as (j + 1) % 2)
    agrees with the step index k = n - 1 - j only when n is even."""
    toy = MixtureToy("eps", 1)
    latent, sigmas = toy.sample_data(), schedule("eps", steps)
    inv = {}
    with monkeypatch.context() as m:
        m.setattr(edict, "first_updated", lambda k: (steps - k) % 2)  # (j + 1) % 2
        model = model_for(toy, sigmas)
        sample_edict_inversion(model, latent, sigmas.flip(0), callback=model.step_done, result=inv)
    out = {}
    model = model_for(toy, sigmas)
    sample_edict(model, latent, sigmas, callback=model.step_done, pair=inv["pair"], result=out)
    err = max((t - latent).abs().max().item() for t in out["pair"])
    assert (err < 1e-9) if steps % 2 == 0 else (err > 1e-4), err


def test_the_model_is_never_evaluated_at_sigma_zero():
    toy = MixtureToy("eps", 1)
    seen = []
    estimates = toy.estimates

    def spy(x, sigma):
        seen.append(float(sigma.reshape(-1)[0]))
        return estimates(x, sigma)

    toy.estimates = spy
    assert edict_round_trip(toy, toy.sample_data(), schedule("eps", 5)) < 1e-6
    assert min(seen) > 0 and len(seen) == 2 * 2 * 5  # two per step, each way


def test_generation_from_noise_lands_near_ddim_with_both_sequences_together():
    """From noise (x = y), 50 steps: x and y agree closely and x is near DDIM's sample. (At a
    handful of steps they do not: each update evaluates f at a state of the next noise level
    with the current sigma, as the paper does, so EDICT wants many steps.)"""
    toy = MixtureToy("eps", 1)
    sigmas = schedule("eps", 50)
    noise = 14.6 * torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(3))
    out = {}
    model = model_for(toy, sigmas)
    x = sample_edict(model, noise, sigmas, callback=model.step_done, result=out)
    assert x.dtype == torch.float32 and out["pair"][0].dtype == torch.float64
    assert (out["pair"][0] - out["pair"][1]).abs().max() < 0.02
    ddim = SAMPLERS["euler"](model_for(toy, sigmas), noise, sigmas, {}, disable=True)
    assert (x - ddim).abs().max() < 0.5
    assert model.run.finish().nfe_per_step == [4.0] * 50  # cond + uncond, twice per step


def test_apg_without_momentum_round_trips_exactly():
    toy = MixtureToy("eps", 3)
    latent, sigmas = toy.sample_data(), schedule("eps", 9)
    policy = APGPolicy(scale=5.0, eta=0.0, norm_threshold=2.0, momentum=0.0)
    check_invertible(policy)
    inv, out = {}, {}
    model = PolicyModel(policy, toy, 9)
    sample_edict_inversion(model, latent, sigmas.flip(0), callback=model.step_done, result=inv)
    model = PolicyModel(policy, toy, 9)
    sample_edict(model, latent, sigmas, callback=model.step_done, pair=inv["pair"], result=out)
    assert max((t - latent).abs().max().item() for t in out["pair"]) < 1e-6


@pytest.mark.parametrize("policy", [
    APGPolicy(momentum=-0.5),
    AdaptivePolicy(threshold=0.99),
    LinearAGPolicy(3.0, torch.zeros(4, 5, dtype=torch.float64)),
], ids=["apg-momentum", "adaptive", "linear-ag"])
def test_stateful_policies_are_refused(policy):
    with pytest.raises(ValueError, match="keeps state across steps"):
        check_invertible(policy)


def test_stateless_policies_are_accepted():
    check_invertible(CFGPolicy(7.5))
    check_invertible(APGPolicy(momentum=0.0))


@pytest.mark.parametrize("p", [0.0, 1.0, -0.1, 1.5, math.nan, "0.9"])
def test_mixing_weight_outside_the_open_interval_is_refused(p):
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        check_mixing_weight(p)


@pytest.mark.parametrize("sigmas, problem", [
    ([], "0 steps"), ([14.6], "0 steps"), ([0.0, 1.0, 14.6], "ascending"),
    ([14.6, 0.0, 0.0], "before its last"), ([3.0, 1.0, -0.1], "negative"),
])
def test_bad_schedules_are_refused(sigmas, problem):
    with pytest.raises(ValueError, match=problem):
        check_schedule(sigmas)


def test_the_step_callback_previews_an_x0_estimate_not_the_noisy_state():
    """ComfyUI previews the callback's "denoised": the step's last model estimate, not x."""
    toy = MixtureToy("eps", 2)
    sigmas = schedule("eps", 6)
    model = model_for(toy, sigmas)
    estimates, seen = [], []

    def recording(x, sigma, **kw):
        out = model(x, sigma, **kw)
        estimates.append(out)
        return out

    def callback(info):
        model.step_done(info)
        seen.append((info["denoised"], info["x"]))

    noise = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(4)) * sigmas[0]
    sample_edict(recording, noise, sigmas, callback=callback)
    assert len(seen) == 6 and len(estimates) == 12
    for k, (denoised, x) in enumerate(seen):
        torch.testing.assert_close(denoised, estimates[2 * k + 1].float())  # the step's second evaluation
        assert not torch.equal(denoised, x)
