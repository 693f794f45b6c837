"""Item 4 of the foundation: the pack's CFG equals ComfyUI's CFGGuider bit for bit."""

import pytest
import torch

from .comfy_graph import comfy_cfg, empty_latent, node_out, sample, with_family

pytestmark = pytest.mark.host

SAMPLERS = ["euler", "dpmpp_2m", "ddim", "euler_ancestral"]
STEPS = 4


def guiders(model, positive, negative, cfg):
    from guidance_lab.nodes.cfg import CFGGuiderNode

    ours = CFGGuiderNode.execute(model, positive, negative, cfg).args[0]
    return ours, comfy_cfg(model, positive, negative, cfg)


@pytest.mark.parametrize("family", ["eps", "v", "flow"])
@pytest.mark.parametrize("cfg", [1.0, 7.5])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("sampler_name", SAMPLERS)
def test_pack_cfg_equals_comfyui_cfg_guider(fixture_model, family, cfg, batch, sampler_name):
    base, positive, negative = fixture_model
    model = with_family(base, family)
    ours, theirs = guiders(model, positive, negative, cfg)
    expected = sample(theirs, sampler_name, STEPS, empty_latent(batch), seed=11)
    got = sample(ours, sampler_name, STEPS, empty_latent(batch), seed=11)
    assert got.dtype == torch.float32
    assert torch.isfinite(got).all()
    assert (got - expected).abs().max().item() == 0.0
    record = ours.last_record
    assert record.nfe_per_step == [1.0 if cfg == 1.0 else 2.0] * STEPS


def test_guidance_changes_the_fixture_output(fixture_model):
    """Guards the parity test against a model that ignores its conditioning."""
    model, positive, negative = fixture_model
    a = sample(guiders(model, positive, negative, 1.0)[0], "euler", STEPS, empty_latent(1), seed=3)
    b = sample(guiders(model, positive, negative, 7.5)[0], "euler", STEPS, empty_latent(1), seed=3)
    assert (a - b).abs().max().item() > 1e-3


@pytest.mark.parametrize("family", ["eps", "v", "flow"])
def test_pack_euler_sampler_equals_comfyui_euler(fixture_model, family):
    """The pack's shared loop reproduces ComfyUI's euler exactly."""
    from guidance_lab.nodes.bridge.samplers import pack_sampler

    base, positive, negative = fixture_model
    model = with_family(base, family)
    ours, theirs = guiders(model, positive, negative, 7.5)
    expected = sample(theirs, "euler", STEPS, empty_latent(2), seed=5)
    got = sample(ours, None, STEPS, empty_latent(2), seed=5, sampler=pack_sampler("euler"))
    assert (got - expected).abs().max().item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_pack_cfg_equals_comfyui_cfg_guider_in_half_precision(host, sd15_checkpoint, fixture_model, dtype):
    import comfy.sd

    model = comfy.sd.load_checkpoint_guess_config(str(sd15_checkpoint), output_vae=False, output_clip=False,
                                                  model_options={"dtype": dtype})[0]
    assert model.model_dtype() == dtype
    _, positive, negative = fixture_model
    ours, theirs = guiders(model, positive, negative, 7.5)
    expected = sample(theirs, "dpmpp_2m", STEPS, empty_latent(2), seed=9)
    got = sample(ours, "dpmpp_2m", STEPS, empty_latent(2), seed=9)
    assert torch.isfinite(got).all()
    assert (got - expected).abs().max().item() == 0.0


@pytest.mark.parametrize("family", ["eps", "v", "flow"])
@pytest.mark.parametrize("cfg", [1.0, 7.5])
def test_model_patched_cfg_function_is_applied_as_comfyui_applies_it(fixture_model, family, cfg):
    """A model patched with RescaleCFG (a sampler_cfg_function) samples identically under the
    pack's CFG guider and ComfyUI's CFGGuider."""
    from comfy_extras.nodes_model_advanced import RescaleCFG

    base, positive, negative = fixture_model
    model = node_out(RescaleCFG().patch(with_family(base, family), 0.7))[0]
    plain = sample(comfy_cfg(with_family(base, family), positive, negative, cfg), "euler", STEPS,
                   empty_latent(2), seed=4)
    ours, theirs = guiders(model, positive, negative, cfg)
    expected = sample(theirs, "euler", STEPS, empty_latent(2), seed=4)
    got = sample(ours, "euler", STEPS, empty_latent(2), seed=4)
    assert (got - expected).abs().max().item() == 0.0
    if cfg != 1.0:
        assert (expected - plain).abs().max().item() > 1e-4  # the patch does change the result
    assert ours.last_record.warnings == []


def test_other_policies_warn_in_the_report_when_the_cfg_function_is_patched(fixture_model):
    from comfy_extras.nodes_model_advanced import RescaleCFG

    from guidance_lab.nodes.apg import CUSTOM, APGGuiderNode

    base, positive, negative = fixture_model
    model = node_out(RescaleCFG().patch(base, 0.7))[0]
    guider = node_out(APGGuiderNode.execute(model, positive, negative, 5.0, CUSTOM, 0.0, 0.0, 0.0))[0]
    sample(guider, "euler", STEPS, empty_latent(1), seed=4)
    report = guider.last_record.summary()
    assert "WARNING" in report and "RescaleCFG" in report
