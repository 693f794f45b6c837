"""APG and Adaptive Guidance on a real ComfyUI model: oracles against ComfyUI's CFGGuider."""

import pytest
import torch

from guidance_lab.nodes.adaptive import AdaptiveGuiderNode
from guidance_lab.nodes.apg import CUSTOM, APGGuiderNode
from guidance_lab.nodes.cfg import CFGGuiderNode
from guidance_lab.nodes.validation import NodeInputError

from .comfy_graph import comfy_cfg, empty_latent, sample, with_family

pytestmark = pytest.mark.host
STEPS = 5


@pytest.mark.parametrize("family", ["eps", "v", "flow"])
@pytest.mark.parametrize("batch", [1, 3])
def test_apg_oracle_equals_cfg(fixture_model, family, batch):
    base, pos, neg = fixture_model
    model = with_family(base, family)
    ours = APGGuiderNode.execute(model, pos, neg, 6.0, CUSTOM, 1.0, 0.0, 0.0).args[0]
    got = sample(ours, "euler", STEPS, empty_latent(batch), seed=3)
    expected = sample(comfy_cfg(model, pos, neg, 6.0), "euler", STEPS, empty_latent(batch), seed=3)
    scale = expected.abs().max().item()
    assert (got - expected).abs().max().item() <= 1e-5 * max(scale, 1.0)


@pytest.mark.parametrize("family", ["eps", "v", "flow"])
def test_apg_preset_differs_from_cfg_and_is_finite(fixture_model, family):
    base, pos, neg = fixture_model
    model = with_family(base, family)
    ours = APGGuiderNode.execute(model, pos, neg, 15.0, "SD1.5", 0.0, 0.0, 0.0).args[0]
    got = sample(ours, "dpmpp_2m", STEPS, empty_latent(3), seed=3)
    expected = sample(comfy_cfg(model, pos, neg, 15.0), "dpmpp_2m", STEPS, empty_latent(3), seed=3)
    assert torch.isfinite(got).all() and (got - expected).abs().max() > 1e-3
    assert len(ours.last_record.steps[0].metrics["guidance_norm"]) == 3


@pytest.mark.parametrize("family", ["eps", "v", "flow"])
@pytest.mark.parametrize("batch", [1, 3])
def test_adaptive_guidance_that_never_switches_is_exactly_cfg(fixture_model, family, batch):
    base, pos, neg = fixture_model
    model = with_family(base, family)
    inner = CFGGuiderNode.execute(model, pos, neg, 7.5).args[0]
    ag = AdaptiveGuiderNode.execute(inner, 1.0).args[0]
    got = sample(ag, "euler_ancestral", STEPS, empty_latent(batch), seed=8)
    expected = sample(comfy_cfg(model, pos, neg, 7.5), "euler_ancestral", STEPS, empty_latent(batch), seed=8)
    assert (got - expected).abs().max().item() == 0.0
    assert ag.last_record.nfe_per_step == [2.0] * STEPS


@pytest.mark.parametrize("family", ["eps", "v", "flow"])
def test_adaptive_guidance_switch_drops_uncond_and_keeps_the_steps_before(fixture_model, family):
    base, pos, neg = fixture_model
    model = with_family(base, family)
    inner = CFGGuiderNode.execute(model, pos, neg, 7.5).args[0]
    probe = AdaptiveGuiderNode.execute(inner, 1.0).args[0]
    sample(probe, "euler", STEPS, empty_latent(3), seed=8)
    cosines = [min(s.metrics["cosine"]) for s in probe.last_record.steps]
    # A threshold between the step-2 cosine and the larger of the later ones switches at step 2 at the latest.
    threshold = min(cosines[2], 0.999999)
    ag = AdaptiveGuiderNode.execute(inner, threshold - 1e-6).args[0]
    sample(ag, "euler", STEPS, empty_latent(3), seed=8)
    record = ag.last_record
    switch = max(record.decisions["switch_step"])
    assert 0 <= switch <= 2
    assert record.nfe_per_step == [2.0] * (switch + 1) + [1.0] * (STEPS - switch - 1)
    assert record.total_nfe == 3 * (2 * (switch + 1) + (STEPS - switch - 1))


def test_adaptive_guidance_needs_a_pack_guider(fixture_model):
    model, pos, neg = fixture_model
    with pytest.raises(NodeInputError, match=r"Adaptive Guidance \(Guidance Lab\): input 'guider'"):
        AdaptiveGuiderNode.execute(comfy_cfg(model, pos, neg, 5.0), 0.99)


def test_bad_policy_values_name_the_node(fixture_model):
    model, pos, neg = fixture_model
    with pytest.raises(ValueError, match=r"APG Guider \(Guidance Lab\): .*norm_threshold"):
        APGGuiderNode.execute(model, pos, neg, 5.0, CUSTOM, 0.0, -1.0, 0.0)
    inner = CFGGuiderNode.execute(model, pos, neg, 5.0).args[0]
    with pytest.raises(ValueError, match=r"Adaptive Guidance \(Guidance Lab\): input 'threshold'"):
        AdaptiveGuiderNode.execute(inner, -0.5)


def test_record_plot_draws_a_real_run(fixture_model):
    import json

    from guidance_lab.nodes.record_plot import RecordPlotNode

    model, pos, neg = fixture_model
    inner = CFGGuiderNode.execute(model, pos, neg, 7.5).args[0]
    ag = AdaptiveGuiderNode.execute(inner, 0.5).args[0]
    sample(ag, "euler", STEPS, empty_latent(2), seed=8)
    image = RecordPlotNode.execute(ag.last_record.to_json()).args[0]
    assert image.ndim == 4 and image.shape[0] == 1 and image.shape[-1] == 3
    assert image.shape[1] > 400 and float(image.std()) > 0.01
    with pytest.raises(NodeInputError, match=r"Guidance Record Plot \(Guidance Lab\): input 'record'"):
        RecordPlotNode.execute(json.dumps({}))
    with pytest.raises(NodeInputError, match="not JSON"):
        RecordPlotNode.execute("policy: cfg")
