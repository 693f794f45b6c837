"""BDIA / O-BELM Invert, Sample and Sampler on the fixture model through the nodes: exact round
trips on eps, v-prediction and flow models (batch 1 and 3, odd and even steps, partial
schedules), one evaluation per step, every ComfyUI scheduler's schedule accepted, the
SAMPLER in SamplerCustomAdvanced, and bad input refused naming node and input."""

import dataclasses
import re

import pytest
import torch

from guidance_lab.nodes.adaptive import AdaptiveGuiderNode
from guidance_lab.nodes.apg import CUSTOM, APGGuiderNode
from guidance_lab.nodes.bidirectional import (BidirectionalInvertNode, BidirectionalSampleNode,
                                              BidirectionalSamplerNode)
from guidance_lab.nodes.bridge.bidirectional import bidirectional_sample
from guidance_lab.nodes.cfg import CFGGuiderNode
from guidance_lab.nodes.edict import edict_policy
from guidance_lab.nodes.guider_common import build_guider
from guidance_lab.nodes.validation import NodeInputError
from guidance_lab.samplers.bidirectional import METHODS, check_schedule

from .comfy_graph import node_out, with_family
from .test_edict import ddim_round_trip, sigmas_for, source_latent

pytestmark = pytest.mark.host
CFG = 3.0
GAMMA = 0.96
INVERT, SAMPLE, SAMPLER = (BidirectionalInvertNode.DISPLAY, BidirectionalSampleNode.DISPLAY,
                           BidirectionalSamplerNode.DISPLAY)


def invert(model, pos, neg, sigmas, latent, method="o_belm", gamma=GAMMA, precision="float64", guidance=None):
    return node_out(BidirectionalInvertNode.execute(model, pos, neg, CFG, sigmas, method, gamma, latent, precision,
                                                    guidance))


def sample(model, pos, neg, sigmas, pair, method="o_belm", gamma=GAMMA, guidance=None):
    return node_out(BidirectionalSampleNode.execute(model, pos, neg, CFG, sigmas, method, gamma, pair,
                                                    guidance))[0]["samples"]


def state_round_trip(model, pos, neg, pair, latent) -> "tuple[float, object]":
    """Max relative error of the float64 final state against the start ComfyUI gave the
    sampler (both in the model's latent space), and the sampling run's record."""
    guider = build_guider(SAMPLE, model, pos, neg, lambda: edict_policy(SAMPLE, CFG, None, model))
    _, final = bidirectional_sample(guider, pair)
    start = model.get_model_object("latent_format").process_in(latent["samples"]).double()
    return ((final[1].cpu() - start).abs().max() / start.abs().max()).item(), guider.last_record


@pytest.fixture(scope="module")
def families(fixture_model):
    base, pos, neg = fixture_model
    return {f: with_family(base, f) for f in ("eps", "v", "flow")}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", ["eps", "v", "flow"])
@pytest.mark.parametrize("batch, steps", [(1, 5), (3, 6)])
def test_round_trip_is_exact_and_far_below_ddim(fixture_model, families, method, family, batch, steps):
    _, pos, neg = fixture_model
    model = families[family]
    sigmas, latent = sigmas_for(model, steps), source_latent(batch)
    pair, preview = invert(model, pos, neg, sigmas, latent, method)
    assert pair.upper.dtype == torch.float64 and pair.shape == (batch, 4, 6, 10) and pair.family == (
        "flow" if family == "flow" else "eps")
    assert preview["samples"].shape == latent["samples"].shape and torch.isfinite(preview["samples"]).all()
    err, record = state_round_trip(model, pos, neg, pair, latent)
    assert err <= 1e-6, err
    # cond + uncond, one evaluation per step: n - 1 steps down (n up, below)
    assert record.nfe_per_step == [2.0] * (steps - 1) and not record.warnings, record.warnings
    out = sample(model, pos, neg, sigmas, pair, method)  # through the nodes: a float32 LATENT
    scale = latent["samples"].abs().max().item()
    assert (out - latent["samples"]).abs().max().item() <= 8 * torch.finfo(torch.float32).eps * scale
    if family != "flow":  # DDIM Invert has no flow latent at sigma 1
        ddim = (ddim_round_trip(model, pos, neg, sigmas, latent) - latent["samples"]).abs().max().item()
        assert ddim > 1000 * err * scale, (ddim, err)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", ["eps", "flow"])
def test_partial_denoise_round_trips_exactly(fixture_model, families, method, family):
    _, pos, neg = fixture_model
    model = families[family]
    sigmas, latent = sigmas_for(model, 9, denoise=0.6), source_latent(3)
    assert len(sigmas) == 10 and float(sigmas[0]) < float(sigmas_for(model, 9)[0])
    pair = invert(model, pos, neg, sigmas, latent, method)[0]
    assert state_round_trip(model, pos, neg, pair, latent)[0] <= 1e-6


def test_inversion_makes_one_evaluation_per_step(fixture_model):
    model, pos, neg = fixture_model
    sigmas, latent = sigmas_for(model, 5), source_latent(1)
    guider = build_guider(INVERT, model, pos, neg, lambda: edict_policy(INVERT, CFG, None, model))
    from guidance_lab.nodes.bridge.bidirectional import bidirectional_invert
    from guidance_lab.samplers.bidirectional import rule_for

    bidirectional_invert(guider, latent["samples"], sigmas, rule_for("o_belm"), torch.float64)
    assert guider.last_record.nfe_per_step == [2.0] * 5 and not guider.last_record.warnings


@pytest.mark.parametrize("method, family", [("bdia", "eps"), ("bdia", "flow"), ("o_belm", "flow")])
def test_float32_state_round_trips_closely(fixture_model, families, method, family):
    _, pos, neg = fixture_model
    model = families[family]
    sigmas, latent = sigmas_for(model, 6), source_latent(1)
    pair = invert(model, pos, neg, sigmas, latent, method, precision="float32")[0]
    assert pair.upper.dtype == torch.float32
    err = ((sample(model, pos, neg, sigmas, pair, method) - latent["samples"]).abs().max()
           / latent["samples"].abs().max()).item()
    assert err < 1e-3, err


def test_float32_o_belm_on_a_schedule_whose_steps_shrink_is_refused(fixture_model):
    """O-BELM's way up grows the pair's rounding by (h_0 / h_{n-1})^2: on SD1.5's normal schedule
    (steps from ~5 down to ~0.03 in sigma) a float32 pair would be rounding, so Invert says so."""
    model, pos, neg = fixture_model
    with pytest.raises(NodeInputError) as err:
        invert(model, pos, neg, sigmas_for(model, 6), source_latent(1), "o_belm", precision="float32")
    message = str(err.value)
    assert message.startswith(f"{INVERT}: input 'sigmas'") and "float64" in message and "rounding" in message


def test_apg_without_momentum_inverts_exactly(fixture_model):
    model, pos, neg = fixture_model
    apg = node_out(APGGuiderNode.execute(model, pos, neg, 5.0, CUSTOM, 0.0, 2.0, 0.0))[0]
    sigmas, latent = sigmas_for(model, 5), source_latent(1)
    for method in METHODS:
        pair = invert(model, pos, neg, sigmas, latent, method, guidance=apg)[0]
        assert pair.guidance.startswith("apg")
        out = sample(model, pos, neg, sigmas, pair, method, guidance=apg)
        assert (out - latent["samples"]).abs().max() < 1e-5


def test_editing_changes_the_latent(fixture_model, sd15_checkpoint):
    from .comfy_graph import encode, load_checkpoint_file

    model, pos, neg = fixture_model
    _, clip, _ = load_checkpoint_file(sd15_checkpoint)
    edit = encode(clip, "a blue square on a white background")
    sigmas, latent = sigmas_for(model, 6, denoise=0.6), source_latent(1)
    for method in METHODS:
        pair = invert(model, pos, neg, sigmas, latent, method)[0]
        same = sample(model, pos, neg, sigmas, pair, method)
        edited = sample(model, edit, neg, sigmas, pair, method)
        assert torch.isfinite(edited).all()
        assert (edited - latent["samples"]).abs().max() > 1e3 * (same - latent["samples"]).abs().max()


@pytest.mark.parametrize("scheduler", ["normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform",
                                       "beta", "linear_quadratic", "kl_optimal"])
def test_every_comfyui_scheduler_gives_a_usable_schedule(fixture_model, families, scheduler):
    for family in ("eps", "flow"):
        for steps in (5, 6, 49, 50):
            check_schedule(sigmas_for(families[family], steps, scheduler=scheduler).tolist())


@pytest.mark.parametrize("method", METHODS)
def test_sampler_runs_in_sampler_custom_advanced(fixture_model, families, method):
    """The SAMPLER from noise: finite, one evaluation per step, and the core's result."""
    from .comfy_graph import empty_latent
    from .comfy_graph import sample as custom_advanced

    _, pos, neg = fixture_model
    for family in ("eps", "flow"):
        guider = node_out(CFGGuiderNode.execute(families[family], pos, neg, 5.0))[0]
        sampler = node_out(BidirectionalSamplerNode.execute(method, 0.5))[0]
        out = custom_advanced(guider, None, 6, empty_latent(2), seed=3, sampler=sampler)
        assert out.shape == (2, 4, 8, 8) and torch.isfinite(out).all()
        assert guider.last_record.nfe_per_step == [2.0] * 6 and not guider.last_record.warnings
        euler = custom_advanced(guider, "euler", 6, empty_latent(2), seed=3)
        assert 0 < (out - euler).abs().max() < 10 * euler.abs().max()


@pytest.mark.parametrize("sigmas, problem", [([14.6], "0 step"), ([14.6, 3.0, 3.0, 0.0], "repeats"),
                                             ([0.5, 3.0, 14.6], "ascending")])
def test_sampler_refuses_a_schedule_it_cannot_walk_naming_itself(fixture_model, families, sigmas, problem):
    """A schedule the sampler cannot walk is refused before any step, naming the node and the input."""
    import comfy_extras.nodes_custom_sampler as cs

    from .comfy_graph import empty_latent

    _, pos, neg = fixture_model
    guider = node_out(CFGGuiderNode.execute(families["eps"], pos, neg, 5.0))[0]
    sampler = node_out(BidirectionalSamplerNode.execute("o_belm", 0.5))[0]
    noise = node_out(cs.RandomNoise.execute(3))[0]
    with pytest.raises(ValueError, match=re.escape(f"{SAMPLER} 'o_belm': the sigmas") + f".*input 'sigmas'.*{problem}"):
        cs.SamplerCustomAdvanced.execute(noise, guider, sampler, torch.tensor(sigmas), empty_latent(1))


def test_o_belm_sampler_takes_the_weight_of_the_model_family_it_runs(fixture_model, families):
    """O-BELM's weight depends on the family (samplers/bidirectional.py, (B-flow)): the node's
    SAMPLER, made before any model is known, reads the family when it runs, and the Guided
    Sampler's o_belm does the same."""
    import comfy.samplers

    from guidance_lab.nodes.bridge.samplers import pack_sampler
    from guidance_lab.samplers.bidirectional import sample_bidirectional

    from .comfy_graph import empty_latent
    from .comfy_graph import sample as custom_advanced

    _, pos, neg = fixture_model
    guider = node_out(CFGGuiderNode.execute(families["flow"], pos, neg, 5.0))[0]

    def run(sampler):
        return custom_advanced(guider, None, 8, empty_latent(1), seed=5, sampler=sampler)

    def core(family):
        return comfy.samplers.KSAMPLER(sample_bidirectional, extra_options={"method": "o_belm", "family": family})

    flow_rule = run(core("flow"))
    assert torch.equal(run(node_out(BidirectionalSamplerNode.execute("o_belm", 0.5))[0]), flow_rule)
    assert torch.equal(run(pack_sampler("o_belm")), flow_rule)
    assert (run(core("eps")) - flow_rule).abs().max() > 1e-4  # the weight in sigma: another sampler


# -- bad input ---------------------------------------------------------------------------------

def refused(node, input_name, fn, *args):
    with pytest.raises(NodeInputError) as err:
        fn(*args)
    assert err.value.node == node and err.value.input_name == input_name, str(err.value)
    assert str(err.value).startswith(f"{node}: input '{input_name}'")
    return str(err.value)


@pytest.fixture(scope="module")
def inverted(fixture_model):
    model, pos, neg = fixture_model
    sigmas = sigmas_for(model, 4)
    return sigmas, invert(model, pos, neg, sigmas, source_latent(1), "bdia")[0]


def test_pair_from_another_model_is_refused(fixture_model, families, inverted):
    _, pos, neg = fixture_model
    sigmas, pair = inverted
    assert "another model" in refused(SAMPLE, "pair", sample, families["v"], pos, neg, sigmas, pair, "bdia")


def test_pair_from_another_schedule_is_refused(fixture_model, inverted):
    model, pos, neg = fixture_model
    sigmas, pair = inverted
    assert "4 steps" in refused(SAMPLE, "pair", sample, model, pos, neg, sigmas_for(model, 5), pair, "bdia")
    other = sigmas_for(model, 4, scheduler="karras")
    assert "another schedule" in refused(SAMPLE, "pair", sample, model, pos, neg, other, pair, "bdia")


def test_pair_from_another_method_or_gamma_is_refused(fixture_model, inverted):
    model, pos, neg = fixture_model
    sigmas, pair = inverted
    assert "'method' is o_belm" in refused(SAMPLE, "pair", sample, model, pos, neg, sigmas, pair, "o_belm")
    assert "'gamma'" in refused(SAMPLE, "pair", sample, model, pos, neg, sigmas, pair, "bdia", 0.93)


def test_damaged_pair_or_another_channel_count_is_refused(fixture_model, inverted):
    model, pos, neg = fixture_model
    sigmas, pair = inverted
    damaged = dataclasses.replace(pair, lower=torch.zeros(1, 4, 8, 8, dtype=torch.float64))
    assert "damaged" in refused(SAMPLE, "pair", sample, model, pos, neg, sigmas, damaged, "bdia")
    wide = torch.zeros(1, 16, 6, 10, dtype=torch.float64)
    sd3_like = dataclasses.replace(pair, upper=wide, lower=wide, shape=tuple(wide.shape))
    assert "16-channel" in refused(SAMPLE, "pair", sample, model, pos, neg, sigmas, sd3_like, "bdia")


def test_not_a_pair_is_refused(fixture_model, inverted):
    model, pos, neg = fixture_model
    sigmas, _ = inverted
    refused(SAMPLE, "pair", sample, model, pos, neg, sigmas, source_latent(1))


@pytest.mark.parametrize("bad", ["ascending", "empty", "one sigma", "one step"])
def test_ascending_or_too_short_sigmas_are_refused(fixture_model, inverted, bad):
    model, pos, neg = fixture_model
    sigmas, pair = inverted
    wrong = {"ascending": sigmas.flip(0), "empty": torch.tensor([]), "one sigma": sigmas[:1],
             "one step": sigmas[-2:]}[bad]
    for method in METHODS:
        message = refused(INVERT, "sigmas", invert, model, pos, neg, wrong, source_latent(1), method)
        assert {"ascending": "ascending", "empty": "empty"}.get(bad, "at least 2") in message
        refused(SAMPLE, "sigmas", sample, model, pos, neg, wrong, pair, method)


@pytest.mark.parametrize("gamma", [0.0, 1.5, -0.2, float("nan")])
def test_gamma_outside_its_range_is_refused(fixture_model, inverted, gamma):
    model, pos, neg = fixture_model
    sigmas, pair = inverted
    refused(INVERT, "gamma", invert, model, pos, neg, sigmas, source_latent(1), "bdia", gamma)
    refused(SAMPLE, "gamma", sample, model, pos, neg, sigmas, pair, "bdia", gamma)


def test_gamma_that_would_drown_the_pair_in_rounding_is_refused(fixture_model):
    model, pos, neg = fixture_model
    sigmas = sigmas_for(model, 50)
    message = refused(INVERT, "gamma", invert, model, pos, neg, sigmas, source_latent(1), "bdia", 0.5)
    assert "rounding" in message and "raise gamma" in message
    message = refused(INVERT, "gamma", invert, model, pos, neg, sigmas, source_latent(1), "bdia", 0.7, "float32")
    assert "float32" in message


def test_sampler_refuses_gamma_out_of_range():
    refused(SAMPLER, "gamma", BidirectionalSamplerNode.execute, "bdia", 1.5)
    assert node_out(BidirectionalSamplerNode.execute("bdia", 0.0))[0].extra_options["gamma"] == 0.0


def test_stateful_policies_are_refused(fixture_model, inverted):
    from comfy.samplers import CFGGuider

    model, pos, neg = fixture_model
    sigmas, pair = inverted
    apg = node_out(APGGuiderNode.execute(model, pos, neg, 5.0, "SD1.5", 0.0, 0.0, 0.0))[0]  # momentum -0.5
    cfg = node_out(CFGGuiderNode.execute(model, pos, neg, CFG))[0]
    ag = node_out(AdaptiveGuiderNode.execute(cfg, 0.99))[0]
    for guider in (apg, ag):
        message = refused(INVERT, "guidance", invert, model, pos, neg, sigmas, source_latent(1), "bdia", GAMMA,
                          "float64", guider)
        assert "keeps state across steps" in message
        refused(SAMPLE, "guidance", sample, model, pos, neg, sigmas, pair, "bdia", GAMMA, guider)
    refused(INVERT, "guidance", invert, model, pos, neg, sigmas, source_latent(1), "bdia", GAMMA, "float64",
            CFGGuider(model))
