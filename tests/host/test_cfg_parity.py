"""Item 4 of the foundation: the pack's CFG equals ComfyUI's CFGGuider bit for bit."""

import pytest
import torch

from .comfy_graph import comfy_cfg, empty_latent, sample, with_family

pytestmark = pytest.mark.host

SAMPLERS = ["euler", "dpmpp_2m", "ddim", "euler_ancestral"]
STEPS = 4


def guiders(model, positive, negative, cfg):
    from guidance_lab.nodes.cfg_guider import CFGGuiderNode

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
    from guidance_lab.comfy_bridge.ksampler import pack_sampler

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
