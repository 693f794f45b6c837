import pytest
import torch

from guidance_lab.samplers import SAMPLERS
from guidance_lab.samplers.cfg_pp import ancestral_split, uncond_tap
from guidance_lab.samplers.sigma_space import alpha

from .toy import ToyGuider

SIGMAS_EPS = torch.tensor([14.0, 6.0, 2.5, 1.0, 0.4, 0.1, 0.0])
SIGMAS_FLOW = torch.tensor([0.99, 0.8, 0.6, 0.4, 0.2, 0.05, 0.0])


def start(family, batch=2):
    x = torch.randn(batch, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    return x * (SIGMAS_EPS[0] if family == "eps" else 1.0)


def sigmas_for(family):
    return SIGMAS_EPS if family == "eps" else SIGMAS_FLOW


@pytest.mark.parametrize("family", ["eps", "flow"])
def test_cond_equal_uncond_makes_cfg_pp_plain_ddim(family):
    model = ToyGuider(scale=0.7, cond_mean=0.5, uncond_mean=0.5, family=family)
    x, s = start(family), sigmas_for(family)
    cfgpp = SAMPLERS["euler_cfg_pp"](model, x.clone(), s, {}, disable=True, family=family)
    ddim = SAMPLERS["euler"](model, x.clone(), s, {}, disable=True)
    assert torch.allclose(cfgpp, ddim, atol=1e-5)


@pytest.mark.parametrize("family", ["eps", "flow"])
def test_ddim_cfg_pp_is_ddim_cfg_with_a_time_varying_scale(family):
    """CFG++ at lambda equals DDIM-CFG at w_t = lambda alpha' sigma / (alpha' sigma - alpha sigma')."""
    lam, s = 0.6, sigmas_for(family)
    schedule = s.tolist()

    def w(sigma):
        i = min(range(len(schedule) - 1), key=lambda k: abs(schedule[k] - sigma))
        a, a_next = alpha(schedule[i], family), alpha(schedule[i + 1], family)
        return lam * a_next * schedule[i] / (a_next * schedule[i] - a * schedule[i + 1])

    x = start(family)
    cfgpp = SAMPLERS["euler_cfg_pp"](ToyGuider(lam, family=family), x.clone(), s, {}, disable=True, family=family)
    ddim = SAMPLERS["euler"](ToyGuider(w, family=family), x.clone(), s, {}, disable=True)
    assert torch.allclose(cfgpp, ddim, atol=1e-4, rtol=1e-4)


def test_uncond_tap_asks_for_uncond_and_keeps_other_hooks():
    other = lambda args: args["denoised"]  # noqa: E731
    extra, seen = uncond_tap({"model_options": {"sampler_post_cfg_function": [other]}, "seed": 3})
    opts = extra["model_options"]
    assert opts["disable_cfg1_optimization"] and opts["sampler_post_cfg_function"][0] is other
    opts["sampler_post_cfg_function"][1]({"denoised": 1, "uncond_denoised": 2})
    assert seen["uncond"] == 2 and extra["seed"] == 3


def test_ancestral_split_conserves_variance_and_eta_zero_is_deterministic():
    down, up = ancestral_split(2.0, 1.0, 1.0, 1.0, eta=1.0)
    assert abs(down**2 + up**2 - 1.0) < 1e-9
    assert ancestral_split(2.0, 1.0, 1.0, 1.0, eta=0.0) == (1.0, 0.0)


@pytest.mark.parametrize("name", ["euler_ancestral_cfg_pp", "dpmpp_2m_cfg_pp"])
@pytest.mark.parametrize("family", ["eps", "flow"])
def test_other_cfg_pp_samplers_reach_the_data(name, family):
    model = ToyGuider(0.8, cond_mean=1.0, uncond_mean=1.0, family=family)
    out = SAMPLERS[name](model, start(family, batch=64), sigmas_for(family), {"seed": 1}, disable=True,
                         family=family)
    assert torch.isfinite(out).all() and abs(out.mean().item() - 1.0) < 0.5


@pytest.mark.parametrize("family", ["eps", "flow"])
def test_inversion_without_guidance_is_ddim_inversion_step_for_step(family):
    """With cond == uncond, CFG++ inversion is DDIM inversion (the model asked at the known
    state and the target level), whatever lambda; sampling it back lands near the start."""
    model = ToyGuider(0.6, cond_mean=0.3, uncond_mean=0.3, family=family)
    s = sigmas_for(family)[:-1]
    x0 = torch.full((1, 1, 2, 2), 0.3) + 0.01 * torch.randn(1, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    noise = SAMPLERS["ddim_cfg_pp_inversion"](model, x0.clone(), s.flip(0), {}, disable=True, family=family)
    assert torch.allclose(noise, SAMPLERS["ddim_inversion"](model, x0.clone(), s.flip(0), {}, disable=True),
                          rtol=1e-5, atol=1e-6)
    back = SAMPLERS["euler_cfg_pp"](model, noise, torch.cat([s, torch.zeros(1)]), {}, disable=True, family=family)
    assert torch.allclose(back, x0, atol=0.05)


def test_inversion_renoises_the_unconditional_x0_with_the_guided_noise():
    """One step s -> t of the reference's DDIM CFG++ inversion, eps model: both estimates at
    (x, t), x0_u = x - s eps_u, x' = x0_u + t eps_lam."""
    model = ToyGuider(0.5, cond_mean=1.0, uncond_mean=-1.0)
    x = torch.full((1, 1, 2, 2), 0.2)
    s, t = 0.5, 2.0
    out = SAMPLERS["ddim_cfg_pp_inversion"](model, x.clone(), torch.tensor([s, t]), {}, disable=True)
    d_c, d_u = model.denoise(x, torch.tensor([t]), 1.0), model.denoise(x, torch.tensor([t]), -1.0)
    eps_u, eps_lam = (x - d_u) / t, (x - (d_u + 0.5 * (d_c - d_u))) / t
    assert torch.allclose(out, x - s * eps_u + t * eps_lam, atol=1e-6)


def test_ancestral_cfg_pp_starts_from_sigma_one_on_flow_models():
    """Flow schedules start at sigma = 1, where alpha = 0: the first ancestral step's new
    noise is all of sigma' (the limit of the alpha > 0 case), not a division by zero."""
    assert ancestral_split(1.0, 0.8, 0.0, 0.2, eta=1.0) == (0.0, 0.8)
    down, up = ancestral_split(1.0 - 1e-9, 0.8, 1e-9, 0.2, eta=1.0)
    assert abs(down) < 1e-6 and abs(up - 0.8) < 1e-9
    model = ToyGuider(0.8, cond_mean=1.0, uncond_mean=1.0, family="flow")
    x = torch.randn(64, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    sigmas = torch.linspace(1.0, 0.0, 11)
    out = SAMPLERS["euler_ancestral_cfg_pp"](model, x, sigmas, {"seed": 1}, disable=True, family="flow")
    assert torch.isfinite(out).all() and abs(out.mean().item() - 1.0) < 0.5


@pytest.mark.parametrize("family", ["eps", "flow"])
def test_inversion_from_a_schedule_that_keeps_its_zero_is_finite_and_starts_like_ddim_inversion(family):
    """An ascending schedule starting at sigma 0 (not FlipSigmas' 1e-4): the model is asked at
    sigma', never at 0, and x at 0 is its own x0; with cond == uncond that is DDIM inversion's
    first step."""
    model = ToyGuider(0.0, cond_mean=0.3, uncond_mean=0.3, family=family)
    s = sigmas_for(family).flip(0)
    x0 = torch.full((2, 1, 2, 2), 0.3) + 0.01 * torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    noise = SAMPLERS["ddim_cfg_pp_inversion"](model, x0.clone(), s, {}, disable=True, family=family)
    assert torch.isfinite(noise).all()
    first = SAMPLERS["ddim_cfg_pp_inversion"](model, x0.clone(), s[:2], {}, disable=True, family=family)
    assert torch.allclose(first, SAMPLERS["ddim_inversion"](model, x0.clone(), s[:2], {}, disable=True), atol=1e-6)


@pytest.mark.parametrize("family", ["eps", "flow"])
def test_dpmpp_2m_cfg_pp_takes_a_first_order_step_at_a_repeated_sigma(family):
    model = ToyGuider(0.8, cond_mean=1.0, uncond_mean=1.0, family=family)
    s = sigmas_for(family)
    for repeated in (torch.cat([s[:2], s[1:]]), torch.cat([s[:3], s[2:]])):  # h = 0, then h_last = 0
        out = SAMPLERS["dpmpp_2m_cfg_pp"](model, start(family), repeated, {}, disable=True, family=family)
        assert torch.isfinite(out).all()


def test_a_guider_that_skips_the_post_cfg_hook_is_refused_not_served_a_stale_uncond():
    class SkipsSecondHook(ToyGuider):
        calls = 0

        def __call__(self, x, sigma, model_options=None, **extra):
            self.calls += 1
            return super().__call__(x, sigma, model_options if self.calls == 1 else {}, **extra)

    for name in ("euler_cfg_pp", "ddim_cfg_pp_inversion"):
        sigmas = SIGMAS_EPS if name == "euler_cfg_pp" else SIGMAS_EPS[:-1].flip(0)
        with pytest.raises(RuntimeError, match="unconditional estimate"):
            SAMPLERS[name](SkipsSecondHook(0.6), start("eps"), sigmas, {}, disable=True)


@pytest.mark.parametrize("name", ["ddim_inversion", "ddim_cfg_pp_inversion"])
def test_inversion_refuses_a_falling_schedule_before_any_step(name):
    """The scheduler's falling sigmas, not flipped, would divide by the final 0 (NaN) or drift
    off to garbage with no error: refused, saying what to connect."""
    model = ToyGuider(scale=0.7, cond_mean=0.5, uncond_mean=0.2, family="eps")
    calls = []
    with pytest.raises(ValueError, match="sigmas must rise.*FlipSigmas"):
        SAMPLERS[name](lambda *a, **k: calls.append(1) or model(*a, **k), start("eps"), SIGMAS_EPS, {},
                       disable=True)
    assert not calls
