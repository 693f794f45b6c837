"""The GUIDER runs any policy: batching, skipped uncond, honest NFE, per-run state."""

import pytest
import torch

from guidance_lab.nodes.bridge.policy_guider import PolicyGuider, run_record
from guidance_lab.guiders import GuidancePolicy, Guided, PolicyRun
from guidance_lab.nodes.cfg import CFGGuiderNode
from guidance_lab.nodes.validation import NodeInputError

from .comfy_graph import empty_latent, sample

pytestmark = pytest.mark.host


def counted(model):
    """The model with a wrapper that logs the batch size of every UNet call."""
    calls = []
    m = model.clone()

    def wrapper(apply_model, args):
        calls.append((args["input"].shape[0], tuple(sorted(args["cond_or_uncond"]))))
        return apply_model(args["input"], args["timestep"], **args["c"])

    m.set_model_unet_function_wrapper(wrapper)
    return m, calls


class SkipUncondAfter(GuidancePolicy):
    """A test policy: CFG until step ``k``, conditional-only afterwards."""

    name = "skip-after"

    def __init__(self, k, scale=5.0):
        self.k, self.scale = k, scale

    def start(self, total_steps):
        policy = self

        class Run(PolicyRun):
            def __init__(self):
                self.seen = []

            def needs_uncond(self, step):
                return step.index < policy.k

            def guide(self, cond, uncond, step):
                self.seen.append(step.index)
                if uncond is None:
                    return Guided(cond, None)
                return Guided(uncond + (cond - uncond) * policy.scale, uncond)

            def decisions(self):
                return {"steps_seen": self.seen}

        return Run()


def test_cond_and_uncond_share_one_model_call(fixture_model):
    model, pos, neg = fixture_model
    model, calls = counted(model)
    guider = CFGGuiderNode.execute(model, pos, neg, 7.5).args[0]
    sample(guider, "euler", 3, empty_latent(2), seed=1)
    assert calls == [(4, (0, 1))] * 3
    assert guider.last_record.total_nfe == 12


def test_skipped_uncond_calls_the_model_with_the_conditional_batch_only(fixture_model):
    model, pos, neg = fixture_model
    model, calls = counted(model)
    guider = PolicyGuider(model, SkipUncondAfter(2))
    guider.set_conds(pos, neg)
    sample(guider, "euler", 5, empty_latent(3), seed=1)
    assert calls == [(6, (0, 1))] * 2 + [(3, (0,))] * 3
    record = guider.last_record
    assert record.nfe_per_step == [2, 2, 1, 1, 1]
    assert record.total_nfe == sum(b for b, _ in calls)
    assert record.decisions == {"steps_seen": [0, 1, 2, 3, 4]}


def test_multi_evaluation_samplers_count_every_evaluation(fixture_model):
    model, pos, neg = fixture_model
    model, calls = counted(model)
    guider = CFGGuiderNode.execute(model, pos, neg, 4.0).args[0]
    sample(guider, "heun", 3, empty_latent(1), seed=2)
    assert guider.last_record.total_nfe == sum(b for b, _ in calls)
    assert len(guider.last_record.steps) == 3


def test_a_cached_guider_starts_every_run_fresh(fixture_model):
    model, pos, neg = fixture_model
    guider = PolicyGuider(model, SkipUncondAfter(1))
    guider.set_conds(pos, neg)
    first = sample(guider, "euler", 3, empty_latent(1), seed=4)
    first_record = guider.last_record
    second = sample(guider, "euler", 3, empty_latent(1), seed=4)
    assert torch.equal(first, second)
    assert guider.last_record is not first_record
    assert guider.last_record.decisions == first_record.decisions == {"steps_seen": [0, 1, 2]}


def test_post_cfg_patches_see_the_policy_output(fixture_model):
    model, pos, neg = fixture_model
    seen = []
    m = model.clone()
    m.set_model_sampler_post_cfg_function(lambda args: seen.append(args["uncond_denoised"]) or args["denoised"])
    guider = PolicyGuider(m, SkipUncondAfter(1))
    guider.set_conds(pos, neg)
    sample(guider, "euler", 2, empty_latent(1), seed=4)
    assert len(seen) == 2 and all(torch.isfinite(u).all() for u in seen)
    assert seen[1].abs().sum() > 0  # uncond skipped: D_c is handed on, never zeros


def test_run_record_is_none_for_foreign_guiders(fixture_model):
    from comfy.samplers import CFGGuider

    assert run_record(CFGGuider(fixture_model[0])) is None


def test_mismatched_latent_channels_name_the_node_and_input(fixture_model):
    model, pos, neg = fixture_model
    guider = CFGGuiderNode.execute(model, pos, neg, 7.5).args[0]
    latent = {"samples": torch.randn(1, 16, 8, 8)}
    with pytest.raises(ValueError, match=r"CFG Guider \(Guidance Lab\): input 'latent_image'.*16 channels.*expects 4"):
        sample(guider, "euler", 2, latent, seed=0)


@pytest.mark.parametrize("bad", [[], [[torch.zeros(1, 0, 768), {}]], "text"])
def test_empty_conditioning_names_the_node_and_input(fixture_model, bad):
    model, pos, _ = fixture_model
    with pytest.raises(NodeInputError, match=r"CFG Guider \(Guidance Lab\): input 'negative'"):
        CFGGuiderNode.execute(model, pos, bad, 7.5)


def test_a_nan_prediction_stops_with_the_step_and_node(fixture_model):
    model, pos, neg = fixture_model
    m = model.clone()
    seen = []

    def nan_after_two_calls(apply_model, args):
        seen.append(1)
        out = apply_model(args["input"], args["timestep"], **args["c"])
        return out * float("nan") if len(seen) > 2 else out

    m.set_model_unet_function_wrapper(nan_after_two_calls)
    guider = CFGGuiderNode.execute(m, pos, neg, 7.5).args[0]
    with pytest.raises(ValueError, match=r"CFG Guider \(Guidance Lab\): .*NaN or inf at step 2 of 4"):
        sample(guider, "euler", 4, empty_latent(1), seed=1)
