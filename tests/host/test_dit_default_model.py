"""The DiT default-model format (ComfyUI's Flux network, flow): loader, stock nodes, the pack's
guiders, the block-replace extension point and bad files, on a small file built at test time."""

import json

import pytest
import torch

from guidance_lab.nodes import default_model as loader_module
from guidance_lab.nodes.bridge.default_model import WeightsError, load_default_model
from guidance_lab.nodes.default_model import DefaultModelLoaderNode
from guidance_lab.nodes.validation import NodeInputError

from .comfy_graph import encode, node_out, sample

pytestmark = pytest.mark.host

NAME = "tiny_dit.safetensors"


@pytest.fixture(scope="module")
def dit_file(host, tmp_path_factory):
    from guidance_lab.tests.fixtures.dit_default_model import write_dit_file

    return write_dit_file(tmp_path_factory.mktemp("dit") / NAME)


@pytest.fixture(scope="module")
def dit(dit_file):
    model, clip, vae, _meta = load_default_model(dit_file, "test", "weights")
    return model, clip, vae


def _latent(batch=2):
    return {"samples": torch.zeros(batch, 3, 32, 32)}


def test_the_file_loads_as_comfyuis_flux_with_flow_sampling(dit, dit_file):
    from safetensors import safe_open

    import comfy.model_base
    import comfy.model_sampling

    model, _clip, _vae = dit
    assert isinstance(model.model, comfy.model_base.Flux)
    assert isinstance(model.get_model_object("model_sampling"), comfy.model_sampling.CONST)
    with safe_open(str(dit_file), framework="pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert (meta["architecture"], meta["family"], meta["prediction"]) == ("flux", "flow", "flow")
    # Flux embeds t in [0, 1] itself: the schedule's timestep is sigma, not 1000 sigma.
    assert json.loads(meta["sampling_settings"]) == {"shift": 1.0, "multiplier": 1.0}
    # BFL's parameter names in the file on every host (0.33 renames the q/k norm gain).
    assert any(k.endswith("query_norm.scale") for k in keys)


def test_the_rope_theta_the_trainer_chose_travels_in_the_file_to_comfyuis_network(host, tmp_path):
    from guidance_lab.tests.fixtures.dit_default_model import write_dit_file

    path = write_dit_file(tmp_path / "theta.safetensors", ["--rope-theta", "100"])
    model, _clip, _vae, _meta = load_default_model(path, "test", "weights")
    assert model.model.diffusion_model.pe_embedder.theta == 100


def test_fine_tuning_from_a_file_refuses_a_run_built_with_other_network_settings(host, dit_file):
    from guidance_lab.tests.fixtures.dit_default_model import TINY_DIT_ARGS
    from tools.training.train import Trainer, parse_args

    Trainer(parse_args(TINY_DIT_ARGS)).load_exported(dit_file)
    with pytest.raises(SystemExit, match="theta"):
        Trainer(parse_args([*TINY_DIT_ARGS, "--rope-theta", "100"])).load_exported(dit_file)


def test_the_loader_node_loads_it_by_name(dit_file, monkeypatch):
    monkeypatch.setattr(loader_module, "WEIGHTS_DIR", dit_file.parent)
    model, clip, vae = node_out(DefaultModelLoaderNode.execute(NAME))
    assert type(model.model).__name__ == "Flux"


def test_stock_ksampler_and_custom_sampler_run_and_the_prompt_and_cfg_matter(dit):
    import nodes
    from comfy_extras import nodes_custom_sampler as cs

    model, clip, vae = dit
    pos, neg = encode(clip, "a red circle on a white background"), encode(clip, "")
    assert "pooled_output" in pos[0][1]  # Flux's modulation takes the pooled text vector
    a = nodes.KSampler().sample(model, 0, 3, 5.0, "euler", "simple", pos, neg, _latent())[0]["samples"]
    image = nodes.VAEDecode().decode(vae, {"samples": a})[0]
    assert image.shape == (2, 32, 32, 3) and torch.isfinite(image).all()
    other = encode(clip, "a blue star on a black background")
    b = nodes.KSampler().sample(model, 0, 3, 5.0, "euler", "simple", other, neg, _latent())[0]["samples"]
    assert (a - b).abs().mean() > 1e-4
    outs = [sample(node_out(cs.CFGGuider.execute(model, pos, neg, cfg))[0], "euler", 3, _latent(1), seed=2)
            for cfg in (1.0, 5.0)]
    assert (outs[0] - outs[1]).abs().max() > 1e-4


def test_the_packs_guiders_match_comfyuis_cfg_and_run_every_policy(dit):
    from comfy_extras import nodes_custom_sampler as cs

    from guidance_lab.nodes.adaptive import AdaptiveGuiderNode
    from guidance_lab.nodes.apg import CUSTOM, APGGuiderNode
    from guidance_lab.nodes.cfg import CFGGuiderNode

    model, clip, _vae = dit
    pos, neg = encode(clip, "a green square on a grey background"), encode(clip, "")
    core = sample(node_out(cs.CFGGuider.execute(model, pos, neg, 4.0))[0], "euler", 4, _latent(2), seed=5)
    ours = node_out(CFGGuiderNode.execute(model, pos, neg, 4.0))[0]
    torch.testing.assert_close(sample(ours, "euler", 4, _latent(2), seed=5), core, atol=1e-5, rtol=1e-5)
    apg = node_out(APGGuiderNode.execute(model, pos, neg, 4.0, CUSTOM, 0.0, 6.5, -0.5))[0]
    ag = node_out(AdaptiveGuiderNode.execute(ours, 0.99))[0]
    for guider in (apg, ag):
        assert torch.isfinite(sample(guider, "euler", 4, _latent(2), seed=5)).all()


def test_dit_block_replacement_reaches_every_block(dit):
    """``patches_replace["dit"]``: the extension point AGD and other packs use on DiTs."""
    import nodes

    model, clip, _vae = dit
    calls = []

    def replace(kind):
        def block(args, extra):
            calls.append(kind)
            return extra["original_block"](args)
        return block

    patched = model.clone()
    patched.set_model_patch_replace(replace("double"), "dit", "double_block", 0)
    patched.set_model_patch_replace(replace("single"), "dit", "single_block", 0)
    pos, neg = encode(clip, "a red ring on a black background"), encode(clip, "")
    nodes.KSampler().sample(patched, 0, 2, 3.0, "euler", "simple", pos, neg, _latent(1))
    assert calls.count("double") == calls.count("single") >= 2


def _rewrite(source, target, **changes):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), framework="pt") as f:
        metadata, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    for key, value in changes.items():
        if value is None:
            metadata.pop(key)
        else:
            metadata[key] = value
    save_file(tensors, str(target), metadata=metadata)


@pytest.mark.parametrize("change, message", [
    ({"architecture": None}, "metadata 'architecture' is None"),
    ({"architecture": "mmdit"}, "metadata 'architecture' is 'mmdit'"),
    ({"architecture": "unet"}, "does not build a unet network"),
], ids=["missing", "unknown", "wrong"])
def test_a_wrong_or_missing_architecture_is_refused_naming_node_and_input(dit_file, tmp_path, monkeypatch,
                                                                         change, message):
    _rewrite(dit_file, tmp_path / "bad.safetensors", **change)
    monkeypatch.setattr(loader_module, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(NodeInputError, match=r"Default Model Loader \(Guidance Lab\): input 'weights'") as err:
        DefaultModelLoaderNode.execute("bad.safetensors")
    assert message in str(err.value)


def test_a_truncated_dit_file_is_refused(dit_file, tmp_path):
    data = dit_file.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(WeightsError, match="truncated or corrupted"):
        load_default_model(tmp_path / "cut.safetensors", "Default Model Loader (Guidance Lab)", "weights")


def test_agd_trains_adapters_on_the_dit_default_model_that_the_loader_and_guider_use(dit, tmp_path):
    """Issue 31: the DiT default model (Flux's network, pixel space) takes AGD's transformer
    adapters (the train node's default, block attention) on its double and single stream blocks:
    a few training steps, then loaded and sampled at one evaluation per step."""
    import folder_paths

    from guidance_lab.guiders.agd import adapter_file
    from guidance_lab.nodes.agd import AGDAdapterLoaderNode, AGDGuiderNode, AGDTrainNode

    model, clip, _vae = dit
    before = folder_paths.get_output_directory(), folder_paths.get_temp_directory()
    folder_paths.set_output_directory(str(tmp_path))
    folder_paths.set_temp_directory(str(tmp_path / "temp"))
    try:
        with torch.inference_mode():
            name = node_out(AGDTrainNode.execute(model, clip, "a red ring\na blue square", 1.0, 6.0, 2, 2, 2, 1e-3, 8,
                                                 32, 0, "agd/dit"))[0]
        made = adapter_file.load(tmp_path / name)
        assert made.adapters.kind == "block_attention" and made.architecture["architecture"] == "flux"
        assert {n.rsplit("_", 1)[0] for n in made.adapters.layout} == {"double_block", "single_block"}
        patched = node_out(AGDAdapterLoaderNode.execute(model, name))[0]
        guider = node_out(AGDGuiderNode.execute(patched, encode(clip, "a red ring"), 4.0))[0]
        out = sample(guider, "euler", 3, _latent(2), seed=1)
    finally:
        folder_paths.set_output_directory(before[0])
        folder_paths.set_temp_directory(before[1])
    assert torch.isfinite(out).all() and guider.last_record.nfe_per_step == [1, 1, 1]


def test_the_trainer_blends_a_teacher_of_the_same_prediction_and_refuses_another(host):
    """--teacher FILE --teacher-weight w: the target is (1 - w) * the data's + w * the teacher's
    prediction for the same noisy input, caption and noise level (a shipped UNet teaching the
    DiT); a teacher of another prediction type is refused, naming it."""
    from pathlib import Path

    from tools.training.train import Trainer, load_teacher, noised_inputs, parse_args
    from guidance_lab.tests.fixtures.dit_default_model import TINY_DIT_ARGS

    weights = Path(__file__).resolve().parents[2] / "default_model" / "weights"
    flow = weights / "guidance_lab_flow32.safetensors"
    args = parse_args([*TINY_DIT_ARGS, "--batch-size", "4", "--teacher", str(flow), "--teacher-weight", "0.75"])
    trainer = Trainer(args)
    assert trainer.teacher is not None and not any(p.requires_grad for p in trainer.teacher.unet.parameters())
    x0, prompts, u, noise = trainer.batch(0)
    xt, timesteps, target, _a, _s = noised_inputs("flow", None, x0, u, noise)
    teacher = load_teacher(flow)
    with torch.no_grad():
        context, _ = teacher.text.clip_l([teacher.tokens(p) for p in prompts])
        predicted = teacher.unet(xt.float(), timesteps=timesteps, context=context)
    args.precision = "fp32"
    blended = trainer.blend_teacher(target, xt, timesteps, prompts)
    assert torch.allclose(blended, 0.25 * target + 0.75 * predicted, atol=1e-5)
    # the teacher knows the data: its prediction is far closer to the target than zero is
    assert ((predicted - target) ** 2).mean() < 0.2 * (target ** 2).mean()
    assert Trainer(parse_args([*TINY_DIT_ARGS, "--teacher", str(flow)])).teacher is None  # weight 0: off
    with pytest.raises(SystemExit, match="predicts v"):
        Trainer(parse_args([*TINY_DIT_ARGS, "--teacher", str(weights / "guidance_lab_vpred32.safetensors"),
                            "--teacher-weight", "0.5"]))


def test_logit_normal_noise_levels_centre_where_the_timestep_mean_puts_them(host):
    """--timesteps logit-normal --timestep-mean m: u = sigmoid(m + n), n ~ N(0, 1), so the
    median level is sigmoid(m) (the band the hand-off probe found the student losing shape in)."""
    import math

    from tools.training.train import parse_args, training_batch

    for mean in (0.0, -0.5):
        args = parse_args(["--timesteps", "logit-normal", "--timestep-mean", str(mean), "--batch-size", "400"])
        u = training_batch(args, 0)[2]
        assert abs(float(u.median()) - 1 / (1 + math.exp(-mean))) < 0.04, mean
        assert 0 < float(u.min()) and float(u.max()) < 1


def test_a_time_boxed_training_run_stops_with_a_checkpoint_and_resumes_to_the_same_weights(host, tmp_path,
                                                                                            monkeypatch):
    """--max-minutes stops after the step that passes the time box, with a checkpoint, and the same
    command resumes it to the weights of an uninterrupted run, bit for bit (batches are drawn per
    step from the seeds; the optimizer state travels in the checkpoint)."""
    from guidance_lab.guiders import training_checkpoint
    from guidance_lab.tests.fixtures.dit_default_model import TINY_DIT_ARGS
    from tools.training import train

    monkeypatch.setattr(train, "TRAINING_CACHE", tmp_path)
    common = [*TINY_DIT_ARGS, "--batch-size", "2", "--steps", "3", "--warmup", "1", "--checkpoint-every", "10",
              "--threads", str(torch.get_num_threads())]
    train.main(["--run-name", "whole", *common])
    train.main(["--run-name", "boxed", *common, "--max-minutes", "0"])
    assert training_checkpoint.load(tmp_path / "boxed" / train.CHECKPOINT)["step"] == 1
    train.main(["--run-name", "boxed", *common])
    whole, resumed = (training_checkpoint.load(tmp_path / run / train.CHECKPOINT)
                      for run in ("whole", "boxed"))
    assert resumed["step"] == whole["step"] == 3
    for name, value in whole["ema"].items():
        assert torch.equal(resumed["ema"][name], value), name
    for name, value in whole["unet"].items():
        assert torch.equal(resumed["unet"][name], value), name


def test_export_writes_the_ema_weights_and_the_runs_architecture(host, tmp_path, monkeypatch):
    """``--export`` writes the EMA weights (not the live ones) with the run's own network config,
    RoPE theta included (it has no tensor, so a wrong one would load silently)."""
    from safetensors.torch import load_file

    from guidance_lab.guiders import training_checkpoint
    from guidance_lab.tests.fixtures.dit_default_model import TINY_DIT_ARGS
    from tools.training import train

    monkeypatch.setattr(train, "TRAINING_CACHE", tmp_path)
    train.main(["--run-name", "run", *TINY_DIT_ARGS, "--rope-theta", "100", "--batch-size", "2", "--steps", "3",
                "--warmup", "1", "--lr", "1e-2", "--threads", str(torch.get_num_threads())])
    saved = training_checkpoint.load(tmp_path / "run" / train.CHECKPOINT)
    path = tmp_path / "run.safetensors"
    train.main(["--run-name", "run", "--export", str(path)])
    exported = load_file(str(path))
    name = "final_layer.linear.weight"  # zero at init, so live and EMA differ after a step
    ema, live = saved["ema"]["unet." + name], saved["unet"][name]
    assert not torch.equal(ema, live)
    assert torch.equal(exported["diffusion_model." + name], ema.half())
    model, _clip, _vae, _meta = load_default_model(path, "test", "weights")
    assert model.model.diffusion_model.pe_embedder.theta == 100
