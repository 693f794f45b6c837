"""EDICT Invert / EDICT Sample and DDIM Invert on the fixture model through the nodes:
exact round trips on eps, v-prediction and flow models (batch 1 and 3, odd and even steps,
non-square latents), DDIM's drift beside them, and bad input refused naming node and input."""

import dataclasses

import pytest
import torch

from guidance_lab.nodes.adaptive import AdaptiveGuiderNode
from guidance_lab.nodes.apg import CUSTOM, APGGuiderNode
from guidance_lab.nodes.bridge.inversion import edict_sample
from guidance_lab.nodes.cfg import CFGGuiderNode
from guidance_lab.nodes.ddim_inversion import DDIMInvertNode
from guidance_lab.nodes.edict import EdictInvertNode, EdictSampleNode, edict_policy
from guidance_lab.nodes.guider_common import build_guider
from guidance_lab.nodes.validation import NodeInputError

from .comfy_graph import node_out, with_family

pytestmark = pytest.mark.host
CFG = 3.0
P = 0.93
INVERT, SAMPLE, DDIM = EdictInvertNode.DISPLAY, EdictSampleNode.DISPLAY, DDIMInvertNode.DISPLAY


def sigmas_for(model, steps, denoise=1.0, scheduler="normal"):
    from comfy_extras import nodes_custom_sampler as cs

    return node_out(cs.BasicScheduler.execute(model, scheduler, steps, denoise))[0]


def source_latent(batch, seed=0):
    """A non-square latent (48 x 80 px) with the spread of VAE-encoded images."""
    return {"samples": 4.0 * torch.randn(batch, 4, 6, 10, generator=torch.Generator().manual_seed(seed))}


def invert(model, pos, neg, sigmas, latent, p=P, precision="float64", guidance=None):
    return node_out(EdictInvertNode.execute(model, pos, neg, CFG, sigmas, p, latent, precision, guidance))


def sample(model, pos, neg, sigmas, edict, p=P, guidance=None):
    return node_out(EdictSampleNode.execute(model, pos, neg, CFG, sigmas, p, edict, guidance))[0]["samples"]


def ddim_round_trip(model, pos, neg, sigmas, latent):
    """DDIM Invert, then ComfyUI's own SamplerCustom (DDIM = euler, noise off) back down."""
    from comfy_extras import nodes_custom_sampler as cs

    noised = node_out(DDIMInvertNode.execute(model, pos, neg, CFG, sigmas, latent))[0]
    sampler = node_out(cs.KSamplerSelect.execute("euler"))[0]
    out = node_out(cs.SamplerCustom.execute(model, False, 0, CFG, pos, neg, sampler, sigmas, noised))[0]
    return out["samples"]


@pytest.fixture(scope="module")
def families(fixture_model):
    base, pos, neg = fixture_model
    return {f: with_family(base, f) for f in ("eps", "v", "flow")}


@pytest.mark.parametrize("family", ["eps", "v", "flow"])
@pytest.mark.parametrize("batch, steps", [(1, 5), (3, 6)])
def test_round_trip_is_exact_and_far_below_ddim(fixture_model, families, family, batch, steps):
    _, pos, neg = fixture_model
    model = families[family]
    sigmas, latent = sigmas_for(model, steps), source_latent(batch)
    edict, preview = invert(model, pos, neg, sigmas, latent)
    assert edict.x.dtype == torch.float64 and edict.shape == (batch, 4, 6, 10)
    assert preview["samples"].shape == latent["samples"].shape and torch.isfinite(preview["samples"]).all()
    # The float64 pair, in the model's latent space, against the start ComfyUI gave the sampler.
    guider = build_guider(SAMPLE, model, pos, neg, lambda: edict_policy(SAMPLE, CFG, None, model))
    _, pair = edict_sample(guider, edict, edict.schedule)
    start = model.get_model_object("latent_format").process_in(latent["samples"]).double()
    state_err = max((t.cpu() - start).abs().max().item() for t in pair)
    assert state_err < 1e-6, state_err
    record = guider.last_record  # cond + uncond, twice per step, booked on the right steps
    assert record.nfe_per_step == [4.0] * steps and not record.warnings, record.warnings
    # Through the nodes: the LATENT is float32, so the round trip is at float32 rounding.
    out = sample(model, pos, neg, sigmas, edict)
    err = (out - latent["samples"]).abs().max().item()
    assert err <= 8 * torch.finfo(torch.float32).eps * latent["samples"].abs().max().item(), err
    if family != "flow":  # DDIM Invert has no flow latent at sigma 1 (see the refusal test)
        ddim = (ddim_round_trip(model, pos, neg, sigmas, latent) - latent["samples"]).abs().max().item()
        assert ddim > 1000 * state_err and ddim > 100 * err, (ddim, state_err, err)


def test_ddim_inversion_on_flow_below_sigma_one_round_trips_approximately(fixture_model, families):
    _, pos, neg = fixture_model
    model = families["flow"]
    sigmas, latent = sigmas_for(model, 6, denoise=0.8), source_latent(1)
    assert float(sigmas[0]) < 1.0
    back = ddim_round_trip(model, pos, neg, sigmas, latent)
    edict_err = (sample(model, pos, neg, sigmas, invert(model, pos, neg, sigmas, latent)[0]) - latent["samples"])
    assert torch.isfinite(back).all()
    assert (back - latent["samples"]).abs().max() > 100 * edict_err.abs().max()


def test_float32_state_round_trips_closely(fixture_model):
    model, pos, neg = fixture_model
    sigmas, latent = sigmas_for(model, 6), source_latent(1)
    edict = invert(model, pos, neg, sigmas, latent, precision="float32")[0]
    assert edict.x.dtype == torch.float32
    err = (sample(model, pos, neg, sigmas, edict) - latent["samples"]).abs().max().item()
    assert 1e-6 < err < 1e-2, err  # drifts, unlike float64, but stays small


def test_apg_without_momentum_inverts_exactly(fixture_model):
    model, pos, neg = fixture_model
    apg = node_out(APGGuiderNode.execute(model, pos, neg, 5.0, CUSTOM, 0.0, 2.0, 0.0))[0]
    sigmas, latent = sigmas_for(model, 5), source_latent(1)
    edict = invert(model, pos, neg, sigmas, latent, guidance=apg)[0]
    assert edict.guidance.startswith("apg")
    out = sample(model, pos, neg, sigmas, edict, guidance=apg)
    assert (out - latent["samples"]).abs().max() < 1e-5


def test_editing_changes_the_latent_and_partial_strength_works(fixture_model, sd15_checkpoint):
    from .comfy_graph import encode, load_checkpoint_file

    model, pos, neg = fixture_model
    _, clip, _ = load_checkpoint_file(sd15_checkpoint)
    edit = encode(clip, "a blue square on a white background")
    sigmas, latent = sigmas_for(model, 6, denoise=0.6), source_latent(1)
    edict = invert(model, pos, neg, sigmas, latent)[0]
    same = sample(model, pos, neg, sigmas, edict)
    edited = sample(model, edit, neg, sigmas, edict)
    assert torch.isfinite(edited).all()
    assert (edited - latent["samples"]).abs().max() > 1e3 * (same - latent["samples"]).abs().max()


def test_progress_bar_moves_and_interrupt_stops(fixture_model):
    import comfy.model_management
    import comfy.utils

    model, pos, neg = fixture_model
    sigmas, latent = sigmas_for(model, 3), source_latent(1)
    seen = []
    old = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: seen.append((value, total)))
    try:
        edict = invert(model, pos, neg, sigmas, latent)[0]
        sample(model, pos, neg, sigmas, edict)
        node_out(DDIMInvertNode.execute(model, pos, neg, CFG, sigmas, latent))
    finally:
        comfy.utils.set_progress_bar_global_hook(old)
    assert seen.count((3, 3)) == 3 and (1, 3) in seen
    comfy.model_management.interrupt_current_processing(True)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            invert(model, pos, neg, sigmas, latent)
    finally:
        comfy.model_management.interrupt_current_processing(False)


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
    return sigmas, invert(model, pos, neg, sigmas, source_latent(1))[0]


def test_edict_latent_from_another_model_is_refused(fixture_model, families, inverted):
    _, pos, neg = fixture_model
    sigmas, edict = inverted
    message = refused(SAMPLE, "edict_latent", sample, families["v"], pos, neg, sigmas, edict)
    assert "another model" in message


def test_edict_latent_from_another_schedule_is_refused(fixture_model, inverted):
    model, pos, neg = fixture_model
    sigmas, edict = inverted
    assert "4 steps" in refused(SAMPLE, "edict_latent", sample, model, pos, neg, sigmas_for(model, 5), edict)
    other = sigmas_for(model, 4, scheduler="karras")
    assert "another schedule" in refused(SAMPLE, "edict_latent", sample, model, pos, neg, other, edict)


def test_edict_latent_with_another_p_is_refused(fixture_model, inverted):
    model, pos, neg = fixture_model
    sigmas, edict = inverted
    message = refused(SAMPLE, "edict_latent", sample, model, pos, neg, sigmas, edict, 0.9)
    assert "mixing weight 0.93" in message


def test_edict_latent_of_another_size_or_channel_count_is_refused(fixture_model, inverted):
    model, pos, neg = fixture_model
    sigmas, edict = inverted
    damaged = dataclasses.replace(edict, y=torch.zeros(1, 4, 8, 8, dtype=torch.float64))
    assert "damaged" in refused(SAMPLE, "edict_latent", sample, model, pos, neg, sigmas, damaged)
    wide = torch.zeros(1, 16, 6, 10, dtype=torch.float64)
    sd3_like = dataclasses.replace(edict, x=wide, y=wide, shape=tuple(wide.shape))
    assert "16-channel" in refused(SAMPLE, "edict_latent", sample, model, pos, neg, sigmas, sd3_like)


def test_not_an_edict_latent_is_refused(fixture_model, inverted):
    model, pos, neg = fixture_model
    sigmas, _ = inverted
    refused(SAMPLE, "edict_latent", sample, model, pos, neg, sigmas, source_latent(1))


@pytest.mark.parametrize("p", [0.0, 1.0, 1.5, -0.2, float("nan")])
def test_mixing_weight_outside_zero_one_is_refused(fixture_model, inverted, p):
    model, pos, neg = fixture_model
    sigmas, edict = inverted
    refused(INVERT, "mixing_weight", invert, model, pos, neg, sigmas, source_latent(1), p)
    refused(SAMPLE, "mixing_weight", sample, model, pos, neg, sigmas, edict, p)


@pytest.mark.parametrize("bad", ["ascending", "empty", "one sigma"])
def test_ascending_or_empty_sigmas_are_refused(fixture_model, inverted, bad):
    model, pos, neg = fixture_model
    sigmas, edict = inverted
    wrong = {"ascending": sigmas.flip(0), "empty": torch.tensor([]), "one sigma": sigmas[:1]}[bad]
    refused(INVERT, "sigmas", invert, model, pos, neg, wrong, source_latent(1))
    refused(SAMPLE, "sigmas", sample, model, pos, neg, wrong, edict)
    refused(DDIM, "sigmas", DDIMInvertNode.execute, model, pos, neg, CFG, wrong, source_latent(1))


def test_stateful_policies_are_refused(fixture_model, inverted):
    from comfy.samplers import CFGGuider

    model, pos, neg = fixture_model
    sigmas, edict = inverted
    apg = node_out(APGGuiderNode.execute(model, pos, neg, 5.0, "SD1.5", 0.0, 0.0, 0.0))[0]  # momentum -0.5
    cfg = node_out(CFGGuiderNode.execute(model, pos, neg, CFG))[0]
    ag = node_out(AdaptiveGuiderNode.execute(cfg, 0.99))[0]
    for guider in (apg, ag):
        message = refused(INVERT, "guidance", invert, model, pos, neg, sigmas, source_latent(1), P, "float64",
                          guider)
        assert "keeps state across steps" in message
        refused(SAMPLE, "guidance", sample, model, pos, neg, sigmas, edict, P, guider)
    refused(INVERT, "guidance", invert, model, pos, neg, sigmas, source_latent(1), P, "float64", CFGGuider(model))


def test_ddim_invert_refuses_a_flow_schedule_starting_at_sigma_one(fixture_model, families):
    _, pos, neg = fixture_model
    model = families["flow"]
    sigmas = sigmas_for(model, 4)
    assert float(sigmas[0]) == 1.0
    message = refused(DDIM, "sigmas", DDIMInvertNode.execute, model, pos, neg, CFG, sigmas, source_latent(1))
    assert "sigma 1" in message
