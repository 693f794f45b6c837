"""The pack's samplers on ascending schedules, on every model family (issue 29, items 1-2):
finite or refused where ComfyUI cannot hand the end back (sigma 1 on flow models), and DDIM
inversion equal, step after step, to an independent computation of its update."""

import pytest
import torch

from guidance_lab.nodes.bridge.samplers import pack_sampler
from guidance_lab.samplers import REGISTRY

from .comfy_graph import comfy_cfg, node_out, with_family
from .families import FLOW, latent, tiny_model

pytestmark = pytest.mark.host
MODELS = ["sd15", "sd15_v", "sd15_flow", "sdxl", "sd3", "flux", "wan", "lumina2"]
STEPS = 5


@pytest.fixture
def model_and_latent(request, fixture_model):
    """(MODEL, positive, negative, latent of 2 samples, is_flow) for the parametrized name."""
    name = request.param
    if name.startswith("sd15"):
        base, pos, neg = fixture_model
        family = {"sd15": "eps", "sd15_v": "v", "sd15_flow": "flow"}[name]
        samples = 2.0 * torch.randn(2, 4, 6, 10, generator=torch.Generator().manual_seed(0))
        return with_family(base, family), pos, neg, samples, family == "flow"
    model, pos, neg = tiny_model(name)
    return model, pos, neg, latent(name, 2), name in FLOW


def schedules(model, split: bool):
    """The model's own schedule flipped (what the samplers' tooltip says); with ``split`` the
    part below its first step only (SplitSigmas at 1, then FlipSigmas), which ends below 1."""
    from comfy_extras import nodes_custom_sampler as cs

    sigmas = node_out(cs.BasicScheduler.execute(model, "simple", STEPS, 1.0))[0]
    if split:
        sigmas = node_out(cs.SplitSigmas.execute(sigmas, 1))[1]
    return node_out(cs.FlipSigmas.execute(sigmas))[0]


def run(model, pos, neg, sampler, sigmas, samples, cfg):
    from comfy_extras import nodes_custom_sampler as cs

    noise = node_out(cs.DisableNoise.execute())[0]
    guider = comfy_cfg(model, pos, neg, cfg)
    out = node_out(cs.SamplerCustomAdvanced.execute(noise, guider, sampler, sigmas, {"samples": samples}))
    return out[0]["samples"]


def scale(name):
    return 0.6 if "cfg_pp" in name else 2.0  # CFG++'s lambda lives in [0, 1]


@pytest.mark.parametrize("model_and_latent", MODELS, indirect=True)
def test_every_pack_sampler_up_a_flipped_schedule_is_finite_or_refused(model_and_latent):
    """Up to sigma 1 a flow model's LATENT would be x / (1 - sigma) = inf (issue 29, item 1):
    refused there naming the way out; finite everywhere else, and on flow models below 1."""
    model, pos, neg, samples, flow = model_and_latent
    full, below_one = schedules(model, split=False), schedules(model, split=True)
    assert float(full[-1]) >= 1.0 if flow else float(full[-1]) > 1.0
    for name in REGISTRY:
        sampler = pack_sampler(name)
        if flow:
            with pytest.raises(ValueError, match=rf"'{name}': the schedule ends at sigma 1 on a flow model.*"
                                                 "SplitSigmas"):
                run(model, pos, neg, sampler, full, samples, scale(name))
        else:
            try:
                out = run(model, pos, neg, sampler, full, samples, scale(name))
            except ValueError as refusal:  # a sampler that only walks down (BDIA, O-BELM) refuses the rise
                assert "ascending" in str(refusal), (name, refusal)
                continue
            assert torch.isfinite(out).all(), name
    for name in ("ddim_inversion", "ddim_cfg_pp_inversion"):
        out = run(model, pos, neg, pack_sampler(name), below_one, samples, scale(name))
        assert torch.isfinite(out).all(), name


def reference_ddim_inversion(family: str):
    """DDIM inversion written from its definition, apart from the pack's code: at every step
    s -> t (ascending) the model is asked at the known state x and the target level t; its
    estimate gives the direction d = (x - D) / t, which splits x at level s into
    (x0, eps) = (x - s d, d) for eps/v models and (x - s d, x + (1 - s) d) for flow models,
    and ComfyUI's own ``noise_scaling`` puts that pair back together at level t."""

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None):
        sampling = model.inner_model.model_patcher.get_model_object("model_sampling")
        ones = x.new_ones([x.shape[0]])
        for i in range(len(sigmas) - 1):
            s, t = sigmas[i], sigmas[i + 1]
            d = (x - model(x, t * ones, **(extra_args or {}))) / t
            x0, eps = x - s * d, (d if family != "flow" else x + (1 - s) * d)
            x = sampling.noise_scaling(t, eps, x0)
        return x

    return sample


@pytest.mark.parametrize("model_and_latent", MODELS, indirect=True)
def test_ddim_inversion_equals_an_independent_computation_over_every_step(model_and_latent):
    """Issue 29, item 2: every step's model call at the target sigma, not only the first."""
    import comfy.samplers

    from guidance_lab.nodes.bridge.samplers import model_family

    model, pos, neg, samples, flow = model_and_latent
    sigmas = schedules(model, split=flow)
    assert len(sigmas) - 1 >= STEPS - 1 >= 4
    family = model_family(model.get_model_object("model_sampling"))
    ours = run(model, pos, neg, pack_sampler("ddim_inversion"), sigmas, samples, 2.0)
    reference = comfy.samplers.KSAMPLER(reference_ddim_inversion(family))
    theirs = run(model, pos, neg, reference, sigmas, samples, 2.0)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4 * theirs.abs().max().item())
