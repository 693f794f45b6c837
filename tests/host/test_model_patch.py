"""Issue 15: the pack's policies as a MODEL patch for the stock KSampler, held to the GUIDER path."""

import pytest
import torch

from guidance_lab.guiders import CFGPolicy
from guidance_lab.guiders.adaptive import AdaptivePolicy
from guidance_lab.guiders.apg import APGPolicy
from guidance_lab.guiders.linear_ag import LinearAGPolicy
from guidance_lab.nodes.bridge.policy_guider import PolicyGuider
from guidance_lab.nodes.model_patch import GuidanceModelPatchNode, GuidanceReportNode
from guidance_lab.nodes.validation import NodeInputError

from .comfy_graph import (book_by_sigma, count_model_calls, empty_latent, node_out, nfe_by_step, sample,
                          schedule, with_family)

pytestmark = pytest.mark.host

STEPS = 4


def policy(method: str, cfg: float):
    if method == "cfg":
        return CFGPolicy(cfg)
    if method == "apg":
        return APGPolicy.from_preset("SD1.5", cfg)
    if method == "ag":  # AG around APG: the switch and the momentum both carry state
        return AdaptivePolicy(threshold=0.9, inner=APGPolicy.from_preset("SD1.5", cfg))
    if method == "linear_ag":  # predicts D_u at steps 1 and 3 (eps_u = eps_c + 0.1 x)
        coefficients = torch.tensor([[1.0, 0.1, 0.0, 0.0, 0.0]] * STEPS, dtype=torch.float64)
        return LinearAGPolicy(cfg, coefficients, frozenset({0, 2}))
    raise ValueError(method)


def guider(model, pos, neg, pol):
    g = PolicyGuider(model, pol)
    g.set_conds(pos, neg)
    return g


def patched(model, pos, neg, pol):
    return node_out(GuidanceModelPatchNode.execute(model, guider(model, pos, neg, pol)))[0]


def ksampler(model, pos, neg, cfg, latent, seed, sampler="euler", steps=STEPS):
    import nodes

    return nodes.KSampler().sample(model, seed, steps, cfg, sampler, "normal", pos, neg, latent)[0]


def report(latent):
    return GuidanceReportNode.execute(latent).args


@pytest.mark.parametrize("method", ["cfg", "apg", "ag", "linear_ag"])
@pytest.mark.parametrize("family", ["eps", "v", "flow"])
@pytest.mark.parametrize("batch", [1, 3])
def test_ksampler_with_patch_equals_the_guider_path(fixture_model, method, family, batch):
    base, pos, neg = fixture_model
    model = with_family(base, family)
    reference = guider(model, pos, neg, policy(method, 6.0))
    expected = sample(reference, "euler", STEPS, empty_latent(batch), seed=21)
    # The patch takes its scale from the KSampler's cfg (LinearAG's must be the calibration's).
    patch_scale = 6.0 if method == "linear_ag" else 2.0
    counted, calls = count_model_calls(patched(model, pos, neg, policy(method, patch_scale)))
    out = ksampler(counted, pos, neg, 6.0, empty_latent(batch), seed=21)
    assert (out["samples"] - expected).abs().max().item() == 0.0
    record = report(out)
    got = out["samples"].guidance_lab_record
    assert got.nfe_per_step == reference.last_record.nfe_per_step
    assert got.settings == reference.last_record.settings
    # NFE honesty: the independent counter around the UNet books the same NFE per step.
    sigmas = schedule(model, STEPS)
    assert nfe_by_step(book_by_sigma(sigmas, [s for s, _ in calls]), calls, STEPS, batch) == got.nfe_per_step
    assert record[0] == got.summary() and "NFE" in record[0]
    if method in ("ag", "linear_ag"):
        assert got.total_nfe < 2 * STEPS * batch  # uncond really skipped somewhere


def test_the_record_survives_fp16_intermediates(fixture_model, monkeypatch):
    """ComfyUI 0.33's --fp16-intermediates casts KSampler's result to float16; the record rides
    on the tensor that lands in the LATENT, so the patch hands over that dtype already."""
    import comfy.cli_args
    import comfy.model_management

    if not hasattr(comfy.model_management, "intermediate_dtype"):
        pytest.skip("this ComfyUI has no intermediate dtype (added after 0.3.75); CI's 0.33 run covers it")
    monkeypatch.setattr(comfy.cli_args.args, "fp16_intermediates", True)
    model, pos, neg = fixture_model
    out = ksampler(patched(model, pos, neg, policy("cfg", 2.0)), pos, neg, 6.0, empty_latent(1), seed=21)
    assert out["samples"].dtype == torch.float16
    assert "NFE" in report(out)[0]


@pytest.mark.parametrize("method", ["apg", "ag"])
def test_ksampler_advanced_start_and_end_steps(fixture_model, method):
    import nodes
    from comfy_extras import nodes_custom_sampler as cs

    model, pos, neg = fixture_model
    steps, start, end = 6, 1, 4
    patched_model = patched(model, pos, neg, policy(method, 1.0))
    out = nodes.KSamplerAdvanced().sample(patched_model, "enable", 5, steps, 5.0, "euler", "normal", pos, neg,
                                          empty_latent(2), start, end, "enable")[0]
    reference = guider(model, pos, neg, policy(method, 5.0))
    sigmas = node_out(cs.BasicScheduler.execute(model, "normal", steps, 1.0))[0][start:end + 1]
    noise = node_out(cs.RandomNoise.execute(5))[0]
    euler = node_out(cs.KSamplerSelect.execute("euler"))[0]
    expected = node_out(cs.SamplerCustomAdvanced.execute(noise, reference, euler, sigmas, empty_latent(2)))[0]
    assert (out["samples"] - expected["samples"]).abs().max().item() == 0.0
    assert out["samples"].guidance_lab_record.total_steps == end - start


def test_sampler_custom_with_patch_equals_the_guider_path(fixture_model):
    from comfy_extras import nodes_custom_sampler as cs

    model, pos, neg = fixture_model
    sampler = node_out(cs.KSamplerSelect.execute("dpmpp_2m"))[0]
    sigmas = node_out(cs.BasicScheduler.execute(model, "karras", STEPS, 1.0))[0]
    out = node_out(cs.SamplerCustom.execute(patched(model, pos, neg, policy("apg", 1.0)), True, 9, 8.0, pos, neg,
                                            sampler, sigmas, empty_latent(2)))[0]
    expected = sample(guider(model, pos, neg, policy("apg", 8.0)), None, STEPS, empty_latent(2), seed=9,
                      scheduler="karras", sampler=sampler)
    assert (out["samples"] - expected).abs().max().item() == 0.0


@pytest.mark.parametrize("sampler_name", ["euler_cfg_pp", "guidance_lab_euler_cfg_pp"])
@pytest.mark.parametrize("case", ["ag_switched", "linear_ag", "ag_batch_switching_apart"])
def test_cfg_pp_samplers_re_noise_with_the_policys_uncond(fixture_model, sampler_name, case):
    """A CFG++ sampler (ComfyUI's, or the pack's) adds its post-CFG hook after the patch's, so it
    reads ComfyUI's uncond: the patch hands it the D_u the guider path re-noises with. After AG's
    switch that is D_c, not ComfyUI's zero placeholder (which fries the image); under LinearAG
    the predicted D_u, not D_c; in a batch whose samples switch at different steps, D_c for the
    switched ones and the evaluated D_u for the others."""
    from comfy_extras import nodes_custom_sampler as cs

    from guidance_lab.nodes.bridge.samplers import pack_sampler

    model, pos, neg = fixture_model
    sampler = (pack_sampler("euler_cfg_pp") if sampler_name.startswith("guidance_lab")
               else node_out(cs.KSamplerSelect.execute(sampler_name))[0])
    steps, batch = {"ag_switched": (5, 1), "linear_ag": (STEPS, 1), "ag_batch_switching_apart": (6, 2)}[case]
    if case == "ag_switched":
        pol = AdaptivePolicy(threshold=0.0, inner=CFGPolicy(0.8))  # conditional-only from step 1
    elif case == "linear_ag":
        pol = policy("linear_ag", 0.8)
    else:  # on the fixture model the two samples switch at steps 1 and 2 (thresholds 0.9988-0.9990)
        pol = AdaptivePolicy(threshold=0.9989, inner=CFGPolicy(0.8))
    reference = guider(model, pos, neg, pol)
    expected = sample(reference, None, steps, empty_latent(batch), seed=3, sampler=sampler)
    if case == "ag_batch_switching_apart":
        assert len(set(reference.last_record.decisions["switch_step"])) == 2, reference.last_record.decisions
    stock = node_out(cs.CFGGuider.execute(patched(model, pos, neg, pol), pos, neg, 0.8))[0]
    got = sample(stock, None, steps, empty_latent(batch), seed=3, sampler=sampler)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def stacked(model):
    """A LoRA-like weight patch and a post-CFG patch (CFGNorm) under the pack's patch."""
    from comfy_extras.nodes_cfg import CFGNorm

    m = model.clone()
    key = next(k for k in m.model_state_dict() if k.endswith("input_blocks.1.0.in_layers.2.weight"))
    weight = m.model_state_dict()[key]
    m.add_patches({key: (torch.full_like(weight, 0.01),)}, 1.0)
    return node_out(CFGNorm.execute(m, 0.9))[0]


@pytest.mark.parametrize("method", ["cfg", "ag"])
def test_another_model_patch_stacked(fixture_model, method):
    base, pos, neg = fixture_model
    model = stacked(base)
    expected = sample(guider(model, pos, neg, policy(method, 6.0)), "euler", STEPS, empty_latent(1), seed=4)
    out = ksampler(patched(model, pos, neg, policy(method, 6.0)), pos, neg, 6.0, empty_latent(1), seed=4)
    assert (out["samples"] - expected).abs().max().item() == 0.0
    plain = sample(guider(base, pos, neg, policy(method, 6.0)), "euler", STEPS, empty_latent(1), seed=4)
    assert (plain - expected).abs().max().item() > 0  # the stacked patches did act
    # A patch stacked after the pack's (RescaleCFG's CFG function) acts as with the GUIDER.
    from comfy_extras.nodes_model_advanced import RescaleCFG

    rescaled = RescaleCFG().patch(patched(model, pos, neg, CFGPolicy(6.0)), 0.7)[0]
    expected = sample(guider(RescaleCFG().patch(model, 0.7)[0], pos, neg, CFGPolicy(6.0)), "euler", STEPS,
                      empty_latent(1), seed=4)
    got = ksampler(rescaled, pos, neg, 6.0, empty_latent(1), seed=4)["samples"]
    assert (got - expected).abs().max().item() == 0.0


def test_one_patched_model_two_settings_alternately(fixture_model):
    """State isolation: each run makes its own GuidedRun (APG momentum, AG's switch), so
    alternating settings on the same patched MODEL repeat exactly and match the GUIDER."""
    model, pos, neg = fixture_model
    shared = patched(model, pos, neg, policy("ag", 1.0))
    settings = [(4.0, 1), (9.0, 2)]
    runs = [ksampler(shared, pos, neg, cfg, empty_latent(2), seed)["samples"] for cfg, seed in settings * 2]
    for i, (cfg, seed) in enumerate(settings):
        expected = sample(guider(model, pos, neg, policy("ag", cfg)), "euler", STEPS, empty_latent(2), seed)
        assert (runs[i] - expected).abs().max().item() == 0.0
        assert (runs[i + 2] - expected).abs().max().item() == 0.0
        assert runs[i].guidance_lab_record is not runs[i + 2].guidance_lab_record
    assert (runs[0] - runs[1]).abs().max().item() > 0


def test_ag_at_cfg_1_is_the_stock_conditional_sampler(fixture_model):
    """cfg 1 with AG: the inner CFG/APG needs no uncond at w = 1, so AG has nothing to skip
    and the run is ComfyUI's own cfg-1 sampling (one NFE per step, no switch)."""
    import nodes

    model, pos, neg = fixture_model
    stock = nodes.KSampler().sample(model, 3, STEPS, 1.0, "euler", "normal", pos, neg, empty_latent(1))[0]
    out = ksampler(patched(model, pos, neg, policy("ag", 7.0)), pos, neg, 1.0, empty_latent(1), seed=3)
    assert (out["samples"] - stock["samples"]).abs().max().item() == 0.0
    record = out["samples"].guidance_lab_record
    assert record.nfe_per_step == [1.0] * STEPS
    assert record.decisions["switch_step"] == []


def test_patching_twice_is_refused(fixture_model):
    model, pos, neg = fixture_model
    once = patched(model, pos, neg, CFGPolicy(5.0))
    message = r"Guidance Model Patch \(Guidance Lab\): input 'model' is already patched with the cfg policy"
    with pytest.raises(NodeInputError, match=message):
        GuidanceModelPatchNode.execute(once, guider(model, pos, neg, APGPolicy()))


def test_linear_ag_refuses_a_cfg_other_than_the_calibration(fixture_model):
    model, pos, neg = fixture_model
    with pytest.raises(ValueError, match="calibrated at cfg 6"):
        ksampler(patched(model, pos, neg, policy("linear_ag", 6.0)), pos, neg, 7.0, empty_latent(1), seed=1)


def test_a_pack_guider_on_a_patched_model_runs_its_own_policy(fixture_model):
    model, pos, neg = fixture_model
    patched_model = patched(model, pos, neg, APGPolicy.from_preset("SD1.5", 5.0))
    ours = guider(patched_model, pos, neg, CFGPolicy(5.0))
    got = sample(ours, "euler", STEPS, empty_latent(1), seed=2)
    expected = sample(guider(model, pos, neg, CFGPolicy(5.0)), "euler", STEPS, empty_latent(1), seed=2)
    assert (got - expected).abs().max().item() == 0.0
    assert any("patch is not used" in w for w in ours.last_record.warnings)


def test_report_without_a_record_says_what_to_connect():
    text, record = report(empty_latent(1))[:2]
    assert "no Guidance Lab record" in text and record == "{}"


def test_linear_ag_coefficients_are_refused_on_another_model(fixture_model, output_dir):
    """Through the patch the guider's policy meets the patch node's MODEL: coefficients
    calibrated on the guider's model must not run on a different one."""
    from guidance_lab.nodes.linear_ag import LinearAGGuiderNode

    from .test_linear_ag import calibrate

    model, pos, neg = fixture_model
    path, _ = calibrate(model, pos, neg)
    linear_ag = LinearAGGuiderNode.execute(model, pos, neg, path, 1, 0).args[0]
    other = model.clone()
    key = next(k for k in other.model_state_dict() if k.endswith("input_blocks.1.0.in_layers.2.weight"))
    other.add_patches({key: (torch.full_like(other.model_state_dict()[key], 0.01),)}, 1.0)  # a LoRA, say
    with pytest.raises(NodeInputError, match=r"input 'guider' runs LinearAG.*'model' is another"):
        GuidanceModelPatchNode.execute(other, linear_ag)
    node_out(GuidanceModelPatchNode.execute(model, linear_ag))  # its own model: accepted
