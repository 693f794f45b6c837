"""LinearAG calibration and guider nodes on a real ComfyUI model, and the bad files they refuse."""

import pytest
import torch

from guidance_lab.nodes.bridge.compat import copy_network
from guidance_lab.nodes.linear_ag import LinearAGCalibrateNode, LinearAGGuiderNode
from guidance_lab.nodes.validation import NodeInputError

from .comfy_graph import empty_latent, node_out, sample, with_family

pytestmark = pytest.mark.host
STEPS = 6


def schedule(model, steps, scheduler="normal"):
    from comfy_extras import nodes_custom_sampler as cs

    return node_out(cs.BasicScheduler.execute(model, scheduler, steps, 1.0))[0]


def euler():
    from comfy_extras import nodes_custom_sampler as cs

    return node_out(cs.KSamplerSelect.execute("euler"))[0]


def calibrate(model, pos, neg, name="linear_ag/test"):
    out = LinearAGCalibrateNode.execute(model, pos, neg, euler(), schedule(model, STEPS), empty_latent(1),
                                        6.0, 2, 1000, 1e-4, name).args
    return out[0], out[1]


@pytest.mark.parametrize("family", ["eps", "flow"])
def test_calibrate_then_sample_with_fewer_evaluations(fixture_model, output_dir, family):
    base, pos, neg = fixture_model
    model = with_family(base, family)
    path, report = calibrate(model, pos, neg)
    assert (output_dir / path).is_file() and "relative residual per step" in report
    guider = LinearAGGuiderNode.execute(model, pos, neg, path, 1, 3).args[0]
    got = sample(guider, "euler", STEPS, empty_latent(3), seed=7)  # seeds unlike the calibration's
    assert torch.isfinite(got).all()
    record = guider.last_record
    assert record.nfe_per_step == [2.0, 1.0, 1.0, 2.0, 1.0, 1.0]  # evaluated at steps 0 and 3
    assert record.decisions["uncond_estimated_evaluations"] == 4


def test_refuses_another_schedule_sampler_or_model(fixture_model, output_dir):
    model, pos, neg = fixture_model
    path, _ = calibrate(model, pos, neg)
    guider = LinearAGGuiderNode.execute(model, pos, neg, path, 1, 0).args[0]
    with pytest.raises(ValueError, match=r"LinearAG Guider \(Guidance Lab\): .*calibrated for 6 steps"):
        sample(guider, "euler", STEPS + 2, empty_latent(1), seed=1)
    with pytest.raises(ValueError, match=r"calibrated with sampler 'sample_euler'"):
        sample(guider, "dpmpp_2m", STEPS, empty_latent(1), seed=1)
    with pytest.raises(ValueError, match="another noise schedule"):
        sample(guider, "euler", STEPS, empty_latent(1), seed=1, scheduler="karras")
    # Same weights and sigmas, other prediction type: refused as another model.
    with pytest.raises(NodeInputError, match="prediction type"):
        LinearAGGuiderNode.execute(with_family(model, "v"), pos, neg, path, 1, 0)


def test_refuses_a_file_for_another_model(fixture_model, output_dir):
    model, pos, neg = fixture_model
    path, _ = calibrate(model, pos, neg)
    changed = model.clone()
    changed.model = copy_network(model.model)
    with torch.no_grad():
        for p in changed.model.diffusion_model.parameters():
            p.mul_(1.01)
    with pytest.raises(NodeInputError, match=r"input 'coefficients_file'.*another model"):
        LinearAGGuiderNode.execute(changed, pos, neg, path, 1, 0)


def test_refuses_truncated_foreign_missing_and_escaping_files(fixture_model, output_dir):
    model, pos, neg = fixture_model
    path, _ = calibrate(model, pos, neg)
    data = (output_dir / path).read_bytes()
    (output_dir / "linear_ag" / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (output_dir / "linear_ag" / "garbage.safetensors").write_bytes(b"not a safetensors file")
    for name, message in (("linear_ag/truncated.safetensors", "cannot read"),
                          ("linear_ag/garbage.safetensors", "cannot read"),
                          ("linear_ag/none.safetensors", "no such file"),
                          ("../../etc/passwd", "outside ComfyUI's output folder")):
        with pytest.raises(NodeInputError,
                           match=rf"LinearAG Guider \(Guidance Lab\): input 'coefficients_file'.*{message}"):
            LinearAGGuiderNode.execute(model, pos, neg, name, 1, 0)


def test_a_two_evaluation_sampler_evaluates_uncond_on_the_schedule_steps(fixture_model, output_dir):
    """Heun evaluates twice per step: LinearAG's coefficient index (and its evaluated steps) is
    the schedule step of each evaluation, the same in calibration and in use."""
    from comfy_extras import nodes_custom_sampler as cs

    from .comfy_graph import book_by_sigma, count_model_calls, nfe_by_step

    base, pos, neg = fixture_model
    model, calls = count_model_calls(base)
    heun = node_out(cs.KSamplerSelect.execute("heun"))[0]
    path = LinearAGCalibrateNode.execute(model, pos, neg, heun, schedule(model, STEPS), empty_latent(1), 6.0,
                                         2, 1000, 1e-4, "linear_ag/heun").args[0]
    calls.clear()
    guider = LinearAGGuiderNode.execute(model, pos, neg, path, 1, 3).args[0]  # uncond at steps 0 and 3
    got = sample(guider, "heun", STEPS, empty_latent(1), seed=7)
    assert torch.isfinite(got).all()
    steps = book_by_sigma(schedule(model, STEPS), [s for s, _ in calls])
    assert sorted({step for step, (_, size) in zip(steps, calls) if size == 2}) == [0, 3]
    assert guider.last_record.nfe_per_step == nfe_by_step(steps, calls, STEPS, 1) == [4, 2, 2, 4, 2, 1]


def test_refuses_a_file_calibrated_with_other_sampler_options(fixture_model, output_dir):
    """Issue 16, item 3: eta 1.0 and eta 0.0 are different samplers."""
    from comfy_extras import nodes_custom_sampler as cs

    model, pos, neg = fixture_model
    ancestral = node_out(cs.KSamplerSelect.execute("euler_ancestral"))[0]  # eta 1.0, the function's default
    path = LinearAGCalibrateNode.execute(model, pos, neg, ancestral, schedule(model, STEPS), empty_latent(1),
                                         6.0, 1, 1000, 1e-4, "linear_ag/ancestral").args[0]
    guider = LinearAGGuiderNode.execute(model, pos, neg, path, 1, 0).args[0]
    same = node_out(cs.SamplerEulerAncestral.execute(1.0, 1.0))[0]
    assert torch.isfinite(sample(guider, None, STEPS, empty_latent(1), seed=1, sampler=same)).all()
    for eta, s_noise, option in ((0.0, 1.0, "eta = 1.0, this run's sampler has eta = 0.0"),
                                 (1.0, 0.5, "s_noise = 1.0, this run's sampler has s_noise = 0.5")):
        other = node_out(cs.SamplerEulerAncestral.execute(eta, s_noise))[0]
        with pytest.raises(ValueError, match=r"LinearAG Guider \(Guidance Lab\): input 'coefficients_file' "
                                             rf"\('{path}'\) does not fit .*sampler option {option}"):
            sample(guider, None, STEPS, empty_latent(1), seed=1, sampler=other)


def test_refuses_a_file_that_does_not_record_the_sampler_options(fixture_model, output_dir):
    from safetensors import safe_open
    from safetensors.torch import save_file

    model, pos, neg = fixture_model
    path, _ = calibrate(model, pos, neg)
    with safe_open(str(output_dir / path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    del meta["sampler_options"]
    save_file(tensors, str(output_dir / "linear_ag" / "old.safetensors"), metadata=meta)
    with pytest.raises(NodeInputError, match=r"'coefficients_file'.*did not record the sampler's options"):
        LinearAGGuiderNode.execute(model, pos, neg, "linear_ag/old.safetensors", 1, 0)


def test_guidance_end_leaves_the_last_steps_conditional_only(fixture_model, output_dir):
    """guidance_end 0.5 of 6 steps: uncond evaluated at steps 0 and 2 (every 2), estimated at
    step 1, nothing from step 3 on, as an independent counter of the model's calls sees it."""
    from .comfy_graph import book_by_sigma, count_model_calls, nfe_by_step

    base, pos, neg = fixture_model
    model, calls = count_model_calls(base)
    path, _ = calibrate(model, pos, neg)
    calls.clear()
    guider = LinearAGGuiderNode.execute(model, pos, neg, path, 1, 2, guidance_end=0.5).args[0]
    sample(guider, "euler", STEPS, empty_latent(2), seed=7)
    steps = book_by_sigma(schedule(model, STEPS), [s for s, _ in calls])
    assert guider.last_record.nfe_per_step == nfe_by_step(steps, calls, STEPS, 2) == [2, 1, 2, 1, 1, 1]
    decisions = guider.last_record.decisions
    assert decisions["guided_steps"] == 3 and decisions["uncond_estimated_evaluations"] == 1
    assert decisions["evaluated_steps"] == [0, 2]  # step 4 is past the guidance's end
    with pytest.raises(NodeInputError, match=r"LinearAG Guider \(Guidance Lab\): input 'guidance_end'"):
        LinearAGGuiderNode.execute(model, pos, neg, path, 1, 2, guidance_end=0.0)


def test_a_file_from_the_chained_version_is_refused_and_may_be_overwritten(fixture_model, output_dir):
    from safetensors import safe_open
    from safetensors.torch import save_file

    model, pos, neg = fixture_model
    path, _ = calibrate(model, pos, neg)
    with safe_open(str(output_dir / path), "pt") as f:
        meta = {**f.metadata(), "format": "guidance_lab.linear_ag.v1"}
    save_file({"coefficients": torch.zeros(STEPS, 5, dtype=torch.float64)},
              str(output_dir / "linear_ag" / "chained.safetensors"), metadata=meta)
    with pytest.raises(NodeInputError, match=r"'coefficients_file'.*earlier version.*calibrate again"):
        LinearAGGuiderNode.execute(model, pos, neg, "linear_ag/chained.safetensors", 1, 0)
    out = LinearAGCalibrateNode.execute(model, pos, neg, euler(), schedule(model, STEPS), empty_latent(1),
                                        6.0, 1, 1000, 1e-4, "linear_ag/chained", overwrite=True).args
    assert out[0] == "linear_ag/chained.safetensors"
    assert LinearAGGuiderNode.execute(model, pos, neg, out[0], 1, 0).args[0] is not None


def test_a_gap_longer_than_the_calibration_recorded_names_evaluate_every(fixture_model, output_dir):
    from guidance_lab.guiders.linear_ag import MAX_LAG

    model, pos, neg = fixture_model
    steps = MAX_LAG + 2
    path = LinearAGCalibrateNode.execute(model, pos, neg, euler(), schedule(model, steps), empty_latent(1),
                                         6.0, 1, 1000, 1e-4, "linear_ag/long").args[0]
    assert LinearAGGuiderNode.execute(model, pos, neg, path, 1, MAX_LAG).args[0] is not None
    with pytest.raises(NodeInputError, match=rf"input 'evaluate_every'.*more than {MAX_LAG} steps after"):
        LinearAGGuiderNode.execute(model, pos, neg, path, 1, 0)


def test_a_sampler_of_the_same_name_from_elsewhere_is_named_by_its_source(fixture_model, output_dir):
    """Issue 29, item 3: ComfyUI's euler and the pack's (the same function name, equal in exact
    arithmetic) are different samplers to a calibration, and the refusal says so, naming the
    guider's input however the run was sampled, instead of a phantom 'options' setting."""
    from guidance_lab.nodes.bridge.samplers import pack_sampler
    from guidance_lab.nodes.model_patch import GuidanceModelPatchNode
    from guidance_lab.nodes.sampling import GuidedSamplerNode
    from comfy_extras import nodes_custom_sampler as cs
    import nodes

    model, pos, neg = fixture_model
    path, _ = calibrate(model, pos, neg)  # with ComfyUI's euler
    guider = LinearAGGuiderNode.execute(model, pos, neg, path, 1, 0).args[0]
    refusal = (rf"^LinearAG Guider \(Guidance Lab\): input 'coefficients_file' \('{path}'\) does not fit .*"
               r"calibrated with ComfyUI \(comfy\.k_diffusion\.sampling\)'s 'sample_euler', this run's "
               r"'sample_euler' is Guidance Lab's")
    noise = node_out(cs.RandomNoise.execute(1))[0]
    with pytest.raises(ValueError, match=refusal) as raised:
        GuidedSamplerNode.execute(noise, guider, pack_sampler("euler"), schedule(model, STEPS), empty_latent(1))
    assert "unset" not in str(raised.value) and "options =" not in str(raised.value)
    # Through the stock KSampler the refusal still names the guider's input, not the patch node.
    patched = GuidanceModelPatchNode.execute(model, guider).args[0]
    with pytest.raises(ValueError, match=r"^LinearAG Guider \(Guidance Lab\): input 'coefficients_file'.*"
                                         r"calibrated for 6 steps, this run has 8"):
        nodes.KSampler().sample(patched, 1, STEPS + 2, 6.0, "euler", "normal", pos, neg, empty_latent(1))
    # The same source and function with other options names the option, not "options".
    assert cal_options_mismatch({"source": "x", "options": {}, "inpaint_options": {}},
                                {"source": "x", "options": {"eta": 1.0}, "inpaint_options": {}}) == \
        "it was calibrated with sampler option eta = not set, this run's sampler has eta = 1.0"


def cal_options_mismatch(recorded: dict, run: dict):
    from guidance_lab.guiders import linear_ag_file
    from guidance_lab.guiders.linear_ag import NormalEquations

    cal = linear_ag_file.Calibration(NormalEquations(1), torch.zeros(1), "sample_x", [1.0, 0.0], 1.0, "eps",
                                     "f", 0.0, {}, recorded)
    return cal.mismatch("sample_x", [1.0, 0.0], "f", run)
