"""AGD training (tools/training/agd.py): trajectories on disk, resume after a kill, DDP, and
training that brings the 1-NFE output closer to CFG's."""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch

from tools.paths import HOST_PYTHON, REPO

pytestmark = pytest.mark.host

TINY = ["--width", "16", "--fourier-features", "16", "--mlp-hidden", "32", "--time-features", "16", "--threads", "1",
        "--quiet"]


@pytest.fixture(scope="module")
def shapes_model(host):
    from guidance_lab.default_model import WEIGHTS_DIR
    from tools.training.agd import VPRED32_FILE, load_model

    return load_model(WEIGHTS_DIR / VPRED32_FILE)  # pinned: the measured numbers below are this model's


@pytest.fixture(scope="module")
def trajectories(shapes_model, tmp_path_factory):
    from guidance_lab.nodes.bridge.fingerprint import base_model_fingerprint
    from tools.training.agd import default_prompts
    from guidance_lab.nodes.bridge.agd_training import generate

    model, clip = shapes_model
    root = tmp_path_factory.mktemp("agd") / "data"
    generate(model, clip, root, default_prompts(6), (2.0, 6.0), 4, seed=0, chunk=4,
             fingerprint=base_model_fingerprint(model))
    return root


@pytest.fixture(scope="module")
def dit_trajectories(host, tmp_path_factory):
    """(data folder, model file) of a tiny random-weight DiT default model (ComfyUI's Flux
    network): offset adapters on its double and single stream blocks."""
    from guidance_lab.nodes.bridge.agd_training import generate
    from guidance_lab.nodes.bridge.fingerprint import base_model_fingerprint
    from guidance_lab.tests.fixtures.dit_default_model import write_dit_file
    from tools.training.agd import default_prompts, load_model

    root = tmp_path_factory.mktemp("agd_dit")
    path = write_dit_file(root / "tiny_dit.safetensors")
    model, clip = load_model(path)
    generate(model, clip, root / "data", default_prompts(6), (2.0, 6.0), 4, seed=0, chunk=4,
             fingerprint=base_model_fingerprint(model))
    return root / "data", path


def train_args(data, run_dir, steps, *extra, model=None):
    from guidance_lab.default_model import WEIGHTS_DIR
    from tools.training.agd import VPRED32_FILE

    return ["train", "--data", str(data), "--run-dir", str(run_dir), "--steps", str(steps), "--batch-size", "8",
            "--lr", "1e-3", "--model", str(model or WEIGHTS_DIR / VPRED32_FILE), "--checkpoint-every", "2", *TINY,
            *extra]


def trained_weights(run_dir):
    from guidance_lab.guiders import training_checkpoint

    return training_checkpoint.load(run_dir / "agd_checkpoint.safetensors")["adapters"]


def run_cli(argv, env=None, launcher=None):
    command = (launcher or [str(HOST_PYTHON)]) + ["-m", "tools.training.agd", *argv]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def test_trajectories_are_cfg_outputs_on_cfg_trajectories(trajectories, shapes_model):
    from guidance_lab.guiders.agd.trajectories import TrajectoryStore

    store = TrajectoryStore.open(trajectories)
    assert store.meta["complete"] and len(store) == 6 * 4 and store.meta["negative"] == ""
    assert store.states.dtype == np.float16 and store.targets.dtype == np.float16
    assert isinstance(store.states, np.memmap)
    scales = np.asarray(store.scales).reshape(6, 4)
    assert (scales == scales[:, :1]).all() and (scales >= 2).all() and (scales <= 6).all()  # one w per trajectory
    assert len(set(scales[:, 0].tolist())) == 6
    # each stored target is the teacher's CFG output at the stored state: recompute one
    model, clip = shapes_model
    from guidance_lab.nodes.bridge.agd_training import encode_prompts

    i = 5  # trajectory 1, step 1
    x, sigma, context, scale, target = store.batch(np.array([i]), "cpu")
    empty = encode_prompts(clip, [""])
    cond = model.model.apply_model(x, sigma, c_crossattn=context)
    uncond = model.model.apply_model(x, sigma, c_crossattn=empty)
    torch.testing.assert_close(uncond + (cond - uncond) * scale, target, atol=3e-3, rtol=3e-3)
    # the next state is the Euler step from this one with the CFG output
    sigmas = np.asarray(store.sigmas).reshape(6, 4)[1]
    x1 = x + (x - target) / sigma * (float(sigmas[2]) - float(sigmas[1]))
    torch.testing.assert_close(x1, store.batch(np.array([i + 1]), "cpu")[0], atol=5e-3, rtol=5e-3)


def test_teacher_forced_rmse_is_the_per_step_distance_to_the_stored_cfg_outputs(trajectories, shapes_model):
    from guidance_lab.guiders.agd import AdapterConfig, AdapterSet
    from guidance_lab.guiders.agd.trajectories import TrajectoryStore
    from guidance_lab.nodes.bridge.agd import attn2_layout
    from guidance_lab.nodes.bridge.agd_training import teacher_forced_rmse

    model, _clip = shapes_model
    store = TrajectoryStore.open(trajectories)
    zero = AdapterSet(attn2_layout(model), AdapterConfig(width=16, fourier_features=16, mlp_hidden=32,
                                                         time_features=16))
    per_step = teacher_forced_rmse(model, store, zero, chunk=5)  # chunks that cut across trajectories
    assert len(per_step) == 4
    # zero adapters: the model's own conditional output against the CFG target, step by step
    x, sigma, context, _scale, target = store.batch(np.arange(len(store)), "cpu")
    cond = model.model.apply_model(x, sigma, c_crossattn=context)
    expected = ((cond - target) ** 2).flatten(1).mean(1).reshape(6, 4).mean(0).sqrt()
    np.testing.assert_allclose(per_step, expected.detach().numpy(), rtol=1e-4)
    assert all(a > b for a, b in zip(per_step, per_step[1:]))  # CFG's change shrinks with the noise


def test_a_killed_run_resumes_from_its_last_checkpoint_with_no_lost_steps(trajectories, tmp_path):
    from guidance_lab.guiders import training_checkpoint
    from tools.training.agd import CRASH_AFTER_ENV, parse_args, train

    train(parse_args(train_args(trajectories, tmp_path / "whole", 6)), log=lambda *_: None)
    killed = run_cli(train_args(trajectories, tmp_path / "killed", 6), env={CRASH_AFTER_ENV: "5"})
    assert killed.returncode == 137, killed.stderr[-2000:]
    assert training_checkpoint.load(tmp_path / "killed" / "agd_checkpoint.safetensors")["step"] == 4
    resumed = run_cli(train_args(trajectories, tmp_path / "killed", 6))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "at step 4" in resumed.stdout
    whole, again = trained_weights(tmp_path / "whole"), trained_weights(tmp_path / "killed")
    assert all(torch.equal(whole[k], again[k]) for k in whole)
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "agd_loss.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_resume_with_other_settings_is_refused(trajectories, tmp_path):
    from tools.training.agd import parse_args, train

    train(parse_args(train_args(trajectories, tmp_path / "run", 2)), log=lambda *_: None)
    with pytest.raises(SystemExit, match=r"other settings \['lr'\]"):
        train(parse_args(train_args(trajectories, tmp_path / "run", 4)[:-len(TINY)] + TINY + ["--lr", "2e-3"]))
    # Another data set under a reused run name (its adapters would be written as this one's).
    other = tmp_path / "other_data"
    meta = json.loads((trajectories / "meta.json").read_text())
    shutil.copytree(trajectories, other)
    (other / "meta.json").write_text(json.dumps({**meta, "seed": meta["seed"] + 1}))
    with pytest.raises(SystemExit, match=r"other settings \['data'\]"):
        train(parse_args(train_args(other, tmp_path / "run", 4)))


def test_evaluate_refuses_an_adapter_of_another_model(tmp_path):
    from guidance_lab.default_model import AGD_ADAPTERS, AGD_DIR, FLOW32, WEIGHTS_DIR

    result = run_cli(["evaluate", "--adapter", str(AGD_DIR / AGD_ADAPTERS[FLOW32]), "--model",
                      str(WEIGHTS_DIR / "guidance_lab_vpred32.safetensors"), "--prompts", "2", "--steps", "2",
                      "--threads", "1"])
    assert result.returncode != 0 and "use the model it was trained on" in result.stderr, result.stderr[-2000:]


def test_evaluate_runs_on_the_dit_default_model_with_its_pooled_conditioning(tmp_path):
    """Flux (the DiT default model's network) needs the text encoder's pooled output in every
    conditioning; evaluate passes it to CFG and to AGD alike."""
    from guidance_lab.default_model import AGD_ADAPTERS, AGD_DIR, DIT32, WEIGHTS_DIR

    result = run_cli(["evaluate", "--adapter", str(AGD_DIR / AGD_ADAPTERS[DIT32]), "--model",
                      str(WEIGHTS_DIR / DIT32), "--prompts", "2", "--steps", "3", "--scales", "4", "--seeds", "3",
                      "--threads", "1"])
    assert result.returncode == 0, result.stderr[-2000:]
    row = json.loads(result.stdout)["rows"][0]
    assert row["scale"] == 4 and row["rmse_untrained"] > 0 and row["rmse_trained"] > 0


# DDP: gradients of 2 x 4 samples averaged over two gloo processes vs the mean over 8 in one
# process: the same maths, summed in another order; after 3 AdamW steps the weights agree to
# float32 rounding (stated tolerance: 1e-5 absolute).
DDP_TOLERANCE = 1e-5


@pytest.mark.parametrize("network", ["unet", "dit"])
def test_ddp_on_two_gloo_processes_trains_what_one_process_trains(network, request, tmp_path):
    """Cross-attention adapters on the v-prediction UNet, offset adapters (block replacement
    with activation checkpointing) on a DiT: DDP changes neither."""
    from tools.training.agd import parse_args, train

    data, model = ((request.getfixturevalue("trajectories"), None) if network == "unet"
                   else request.getfixturevalue("dit_trajectories"))
    torchrun = [str(HOST_PYTHON.parent / "torchrun"), "--standalone", "--nproc_per_node", "2"]
    out = tmp_path / "ddp.safetensors"
    ddp = run_cli(train_args(data, tmp_path / "ddp", 3, "--out", str(out), model=model), launcher=torchrun)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    train(parse_args(train_args(data, tmp_path / "one", 3, model=model)), log=lambda *_: None)
    two, one = trained_weights(tmp_path / "ddp"), trained_weights(tmp_path / "one")
    worst = max(float((two[k] - one[k]).abs().max()) for k in one)
    assert worst <= DDP_TOLERANCE
    assert all(float(one[k].abs().max()) > 0 for k in one if k.endswith("out.weight"))  # trained, not initial
    from guidance_lab.guiders.agd import adapter_file

    made = adapter_file.load(out)
    assert made.training["processes"] == 2 and made.scale_range == (2.0, 6.0)
    assert "torchrun" not in made.command and made.command.startswith("python -m tools.training.agd train")


@pytest.mark.xfail(strict=True, reason="open (issue 14): on the v2 default models this short run fits its "
                   "targets (loss -40 %) but does not bring sampled images closer to CFG's at every scale "
                   "(vpred32 before its last 7000 steps: 1.21x closer at 3.5, 0.84x at 5.5, and still failing "
                   "after them; flow32: 1.08x at 3.5); it passed on v1")
def test_training_brings_the_one_pass_output_closer_to_cfg(shapes_model, tmp_path):
    """A small CPU run (16 prompts x 8 steps, 300 steps of batch 16, about 100 s): the RMSE of
    AGD's sampled images to CFG's (same prompts, a seed not in the data) falls at two scales
    of the range. Measured on v1: 1.24x at 3.5, 1.39x at 5.5; on the v2 eps-family model it
    does not hold (strict xfail: it fails the suite the day it passes, to be made a plain
    test again). The issue's target for shipped adapters (a 5x cut) needs a full run."""
    from guidance_lab.guiders.agd import AdapterConfig, AdapterSet
    from guidance_lab.nodes.bridge.agd import attn2_layout
    from guidance_lab.nodes.bridge.agd_training import encode_prompts, fit, generate, sampled_rmse
    from guidance_lab.nodes.bridge.fingerprint import base_model_fingerprint
    from tools.training.agd import default_prompts

    torch.set_num_threads(1)
    model, clip = shapes_model
    prompts = default_prompts(16)
    store = generate(model, clip, tmp_path / "data", prompts, (3.0, 6.0), 8, seed=0,
                     fingerprint=base_model_fingerprint(model))
    config = AdapterConfig(width=32, fourier_features=32, mlp_hidden=64, time_features=32)
    adapters, losses = fit(model, store, config, tmp_path / "run", 300, batch_size=16, lr=3e-3,
                           checkpoint_every=1000, log=lambda *_: None)
    assert np.mean(losses[-20:]) < 0.75 * np.mean(losses[:20])  # v1: < 0.5; vpred32: 0.60
    untrained = AdapterSet(attn2_layout(model), config)
    positive, negative = encode_prompts(clip, prompts[:8]), encode_prompts(clip, [""])
    for scale in (3.5, 5.5):
        before = sampled_rmse(model, positive, negative, untrained, (3.0, 6.0), scale, [100], steps=8)
        after = sampled_rmse(model, positive, negative, adapters, (3.0, 6.0), scale, [100], steps=8)
        print(f"scale {scale}: RMSE to CFG {before:.4f} untrained, {after:.4f} trained ({before / after:.2f}x)")
        assert after < 0.85 * before


def test_an_interrupted_generation_resumes_and_writes_what_an_uninterrupted_one_does(shapes_model, tmp_path):
    from guidance_lab.guiders.agd.trajectories import TrajectoryStore
    from guidance_lab.nodes.bridge.agd_training import generate
    from guidance_lab.nodes.bridge.fingerprint import base_model_fingerprint
    from tools.training.agd import default_prompts

    model, clip = shapes_model

    def stop_after_first_chunk(done, total):
        raise KeyboardInterrupt

    args = (model, clip, tmp_path / "data", default_prompts(6), (2.0, 6.0), 4)
    kwargs = {"seed": 0, "chunk": 2, "fingerprint": base_model_fingerprint(model)}
    with pytest.raises(KeyboardInterrupt):
        generate(*args, **kwargs, progress=stop_after_first_chunk)
    assert not TrajectoryStore.open(tmp_path / "data").meta["complete"]
    resumed = generate(*args, **kwargs)
    whole = generate(model, clip, tmp_path / "whole", *args[3:], **kwargs)
    for name in ("states", "targets", "sigmas", "scales", "prompt_index", "prompts"):
        assert np.array_equal(np.asarray(getattr(resumed, name)), np.asarray(getattr(whole, name))), name
    with pytest.raises(ValueError, match="other settings"):
        generate(model, clip, tmp_path / "data", default_prompts(6), (2.0, 7.0), 4, **kwargs)
    # Another text encoder (here CLIPSetLastLayer's clip skip) makes other embeddings: other data.
    skipped = clip.clone()
    skipped.clip_layer(-2)
    with pytest.raises(ValueError, match=r"other settings \(\['text_fingerprint'\]\)"):
        generate(model, skipped, tmp_path / "data", *args[3:], **kwargs)


def test_the_training_node_keeps_data_made_with_another_text_encoder_apart(shapes_model, tmp_path):
    """The node's cached trajectories are keyed by what the text encoder made of the prompts:
    a second run with another CLIP samples its own, never the first run's."""
    import folder_paths

    from guidance_lab.nodes.bridge.agd_training import train_in_graph

    model, clip = shapes_model
    skipped = clip.clone()
    skipped.clip_layer(-2)
    before = folder_paths.get_temp_directory()
    folder_paths.set_temp_directory(str(tmp_path))
    try:
        for text_encoder in (clip, skipped):
            train_in_graph(model, text_encoder, ["a red circle"], (1.0, 3.0), 2, 1, 2, 1e-3, 4, 0, 32)
    finally:
        folder_paths.set_temp_directory(before)
    assert len(list((tmp_path / "guidance_lab_agd").glob("data_*"))) == 2


@pytest.mark.parametrize("weights", ["guidance_lab_vpred32.safetensors", "guidance_lab_flow32.safetensors"])
def test_a_cfg_run_resumed_from_its_own_state_reproduces_the_whole_run(weights):
    """``resume_from``, which ``evaluate --teacher-steps`` relies on: continuing a run from its
    state after k steps gives the run's own result, on the v-prediction (zero terminal SNR) and
    the flow model alike."""
    import comfy.samplers

    from guidance_lab.default_model import WEIGHTS_DIR
    from guidance_lab.nodes.bridge.agd_training import encode_prompts, resume_from
    from tools.training.agd import default_prompts, load_model

    torch.set_num_threads(1)
    model, clip = load_model(WEIGHTS_DIR / weights)
    positive, negative = encode_prompts(clip, default_prompts(2)), encode_prompts(clip, [""]).expand(2, -1, -1)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", 6).cpu()
    sampler = comfy.samplers.sampler_object("euler")
    noise = torch.randn((2, 3, 32, 32), generator=torch.Generator().manual_seed(0))

    def run(start_noise, start_sigmas, callback=None):
        guider = comfy.samplers.CFGGuider(model)
        guider.set_conds([[positive, {}]], [[negative.contiguous(), {}]])
        guider.set_cfg(4.0)
        return guider.sample(start_noise, torch.zeros_like(noise), sampler, start_sigmas, disable_pbar=True, seed=0,
                             callback=callback)

    states = {}
    whole = run(noise, sigmas, lambda i, _d, x, _t: states.setdefault(i, x.clone()))
    for k in (1, 3, 5):
        resumed = run(*resume_from(states[k], sigmas, k))
        assert torch.allclose(resumed, whole, atol=1e-4), (k, (resumed - whole).abs().max())
