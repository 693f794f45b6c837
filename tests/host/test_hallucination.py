"""The hallucination score in real ComfyUI runs of the default model: the Guided Sampler's record
and the Guidance Model Patch's (stock KSampler) carry it, a sample scores the same alone and in
its batch, scoring costs no model evaluation, and the Score and Filter nodes."""

import json

import pytest
import torch

from guidance_lab.default_model import FLOW32
from guidance_lab.nodes.extension import NODES
from guidance_lab.nodes.cfg import CFGGuiderNode
from guidance_lab.nodes.default_model import DefaultModelLoaderNode
from guidance_lab.nodes.hallucination import HallucinationFilterNode, HallucinationScoreNode
from guidance_lab.nodes.model_patch import GuidanceModelPatchNode, GuidanceReportNode
from guidance_lab.nodes.sampling import GuidedSamplerNode
from guidance_lab.nodes.validation import NodeInputError

from .comfy_graph import count_model_calls, encode, node_out

pytestmark = pytest.mark.host

STEPS, BATCH, CFG, SEED = 12, 3, 3.0, 5


@pytest.fixture(scope="module")
def flow_model(host):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 32px model: threads only contend on a shared machine
    model, clip, vae = node_out(DefaultModelLoaderNode.execute(FLOW32))
    yield model, encode(clip, "a red star on a white background"), encode(clip, ""), vae
    torch.set_num_threads(threads)


def latent(batch_index):
    return {"samples": torch.zeros(len(batch_index), 3, 32, 32), "batch_index": list(batch_index)}


def guided(model, positive, negative, batch_index, sampler="euler"):
    """(sampled latent, record dict) of the Guided Sampler with the pack's CFG guider. ComfyUI's
    RandomNoise draws each latent's noise by its batch_index: sample i alone gets the noise it
    has inside the batch."""
    from comfy_extras import nodes_custom_sampler as cs

    guider = node_out(CFGGuiderNode.execute(model, positive, negative, CFG))[0]
    noise = node_out(cs.RandomNoise.execute(SEED))[0]
    sigmas = node_out(cs.BasicScheduler.execute(model, "normal", STEPS, 1.0))[0]
    out = node_out(GuidedSamplerNode.execute(noise, guider, node_out(cs.KSamplerSelect.execute(sampler))[0],
                                             sigmas, latent(batch_index)))
    return out[0], json.loads(out[3])


def test_guided_sampler_record_scores_each_sample_alone_as_in_its_batch(flow_model):
    model, positive, negative, _ = flow_model
    batch, record = guided(model, positive, negative, range(BATCH))
    scores = record["hallucination"]["score"]
    assert len(scores) == BATCH and all(s > 0 for s in scores) and len(set(scores)) == BATCH
    assert record["hallucination"]["estimates"] >= 2 and record["hallucination"]["space"] == "latent"
    for i in range(BATCH):
        alone, single = guided(model, positive, negative, [i])
        # The UNet's batched kernels round differently from batch 1 (1e-6 here); the score adds
        # nothing that mixes samples (tests/core/test_trajectory_variance.py: bit-identical).
        torch.testing.assert_close(alone["samples"][0], batch["samples"][i], rtol=1e-4, atol=1e-5)
        assert single["hallucination"]["score"][0] == pytest.approx(scores[i], rel=1e-3), f"sample {i}"


def test_scoring_costs_no_model_evaluation(flow_model):
    """The UNet is called as often as under ComfyUI's own CFGGuider, and the record books 2 NFE per
    image per step: the score reuses the estimates the sampler already has."""
    from comfy.samplers import CFGGuider
    from comfy_extras import nodes_custom_sampler as cs

    model, positive, negative, _ = flow_model
    counted, calls = count_model_calls(model)
    _, record = guided(counted, positive, negative, range(BATCH))
    pack_calls = list(calls)
    calls.clear()
    stock = CFGGuider(counted)
    stock.set_conds(positive, negative)
    stock.set_cfg(CFG)
    sigmas = node_out(cs.BasicScheduler.execute(model, "normal", STEPS, 1.0))[0]
    stock.sample(torch.randn(BATCH, 3, 32, 32), torch.zeros(BATCH, 3, 32, 32),
                 node_out(cs.KSamplerSelect.execute("euler"))[0], sigmas, disable_pbar=True, seed=SEED)
    assert pack_calls == calls
    assert record["nfe_per_step"] == [2.0] * STEPS and record["total_nfe"] == 2 * BATCH * STEPS


def test_model_patch_record_carries_the_same_score_as_the_guided_sampler(flow_model):
    import nodes

    model, positive, negative, _ = flow_model
    guider = node_out(CFGGuiderNode.execute(model, positive, negative, 7.0))[0]
    patched = node_out(GuidanceModelPatchNode.execute(model, guider))[0]
    sampled = nodes.KSampler().sample(patched, SEED, STEPS, CFG, "euler", "normal", positive, negative,
                                      latent(range(BATCH)))[0]
    record = json.loads(node_out(GuidanceReportNode.execute(sampled))[1])
    _, reference = guided(model, positive, negative, range(BATCH))
    assert record["nfe_per_step"] == reference["nfe_per_step"]
    assert record["hallucination"]["score"] == pytest.approx(reference["hallucination"]["score"], rel=1e-5)


def test_score_and_filter_nodes(flow_model):
    import nodes

    model, positive, negative, vae = flow_model
    sampled, record = guided(model, positive, negative, range(BATCH))
    images = nodes.VAEDecode().decode(vae, sampled)[0]
    text = json.dumps(record)
    scores, plot = node_out(HallucinationScoreNode.execute(text))
    assert json.loads(scores) == record["hallucination"]["score"] and plot.ndim == 4 and plot.shape[-1] == 3

    values = record["hallucination"]["score"]
    middle = sorted(values)[1]
    kept, flagged, plot, report = node_out(HallucinationFilterNode.execute(images, text, "threshold", middle, 4))
    assert kept.shape[0] == 2 and flagged.shape[0] == 1 and "kept 2 of 3" in report
    worst = max(range(BATCH), key=values.__getitem__)
    assert torch.equal(flagged[0], images[worst])
    kept, flagged, _, _ = node_out(HallucinationFilterNode.execute(images, text, "keep_best", 0.0, 1))
    best = min(range(BATCH), key=values.__getitem__)
    assert kept.shape[0] == 1 and torch.equal(kept[0], images[best]) and flagged.shape[0] == 2
    # Nothing kept: that output blocks its consumers (a stock SaveImage fails on an empty batch).
    from comfy_execution.graph_utils import ExecutionBlocker

    kept, flagged, _, _ = node_out(HallucinationFilterNode.execute(images, text, "threshold", 0.0, 4))
    assert isinstance(kept, ExecutionBlocker) and kept.message is None and flagged.shape[0] == BATCH


def test_filter_names_itself_and_the_input_on_bad_input(flow_model):
    images = torch.rand(2, 32, 32, 3)
    record = json.dumps({"steps": [], "hallucination": {"score": [0.1, 0.2, 0.3], "estimates": 4,
                                                         "window_noise_level": 0.5}})
    with pytest.raises(NodeInputError, match=r"Hallucination Filter \(Guidance Lab\): input 'images' holds 2"):
        HallucinationFilterNode.execute(images, record, "threshold", 0.1, 1)
    unscored = json.dumps({"steps": [], "hallucination": {"score": None, "estimates": 1,
                                                           "window_noise_level": 0.5}})
    with pytest.raises(NodeInputError, match=r"input 'record' cannot be read: it holds no hallucination score.*more steps"):
        HallucinationFilterNode.execute(images, unscored, "threshold", 0.1, 1)
    for bad in ("{}", "not json", json.dumps({"hallucination": {"score": [1.0, "x"]}})):
        with pytest.raises(NodeInputError, match=r"Hallucination Score \(Guidance Lab\): input 'record'"):
            HallucinationScoreNode.execute(bad)


def test_nodes_are_registered_with_tooltips():
    for node in (HallucinationScoreNode, HallucinationFilterNode):
        schema = node.define_schema()
        assert node in NODES and schema.node_id.startswith("GuidanceLab_")
        assert all(i.tooltip for i in schema.inputs)
