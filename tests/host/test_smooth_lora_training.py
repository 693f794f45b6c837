"""Smooth-LoRA training for the default models (tools/training/smooth_lora.py): the file it
writes loads through the pack's Smooth-LoRA loader, the regulariser is the stated one, a run
resumes exactly, and the ISTD study runs with and without the LoRA."""

import json
import math

import pytest
import torch

from guidance_lab.nodes.default_model import DEFAULT_WEIGHTS, WEIGHTS_DIR

from .test_smooth_lora import patched_weights

pytestmark = pytest.mark.host

SHIPPED = WEIGHTS_DIR / DEFAULT_WEIGHTS
TINY = ["--batch-size", "2", "--threads", "1", "--device", "cpu", "--checkpoint-every", "2"]


@pytest.fixture
def training(host, tmp_path, monkeypatch):
    """The trainer module with its checkpoints under tmp_path and ComfyUI's attention restored afterwards."""
    import comfy.ldm.modules.attention as attention

    from tools.training import smooth_lora

    monkeypatch.setattr(attention, "optimized_attention", attention.optimized_attention)
    monkeypatch.setattr(attention, "optimized_attention_masked", attention.optimized_attention_masked)
    monkeypatch.setattr(smooth_lora, "TRAINING_CACHE", tmp_path / "training")
    smooth_lora.plain_attention()
    return smooth_lora


def with_prediction(tmp_path, prediction):
    """The shipped weights relabelled as an eps (SD schedule), v (zero terminal SNR) or flow
    model: the same network, enough to exercise each family's x0 estimate and noise scale."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(SHIPPED), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = dict(f.metadata())
    settings = ({"shift": 1.0, "multiplier": 1000} if prediction == "flow" else
                {"beta_schedule": "linear", "linear_start": 0.00085, "linear_end": 0.012,
                 "zsnr": prediction == "v"})
    path = tmp_path / f"{prediction}.safetensors"
    save_file(tensors, str(path), metadata={**meta, "prediction": prediction, "sampling_settings": json.dumps(settings),
                                            "family": "flow" if prediction == "flow" else "eps"})
    return path


def trainer_for(training, weights, **changes):
    args = training.parse_args(["--weights", str(weights), "--out", "unused.safetensors", *TINY])
    for key, value in changes.items():
        setattr(args, key, value)
    return training.SmoothLoraTrainer(args)


def test_trained_file_loads_through_the_loader_every_layer_placed_as_w_plus_up_down(training, tmp_path, loras):
    from safetensors import safe_open

    import comfy.lora

    from guidance_lab.nodes.bridge.default_model import load_default_model
    from guidance_lab.nodes.bridge.fingerprint import model_fingerprint
    from guidance_lab.nodes.smooth_lora import SmoothLoraLoaderNode

    out = loras / "smooth_shapes32.safetensors"
    training.main(["--weights", str(SHIPPED), "--out", str(out), "--steps", "2", *TINY])
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert meta["format"] == training.FORMAT and meta["rank"] == "8" and meta["steps"] == "2"
    assert float(meta["reg_weight"]) == 1.0 and math.isfinite(float(meta["final_loss"]))
    assert "--steps 2" in meta["command"]
    # Exactly diffusers' attention-processor layout: 2 tensors per projection, no alpha.
    assert all(".processor.to_" in k and k.endswith(("_lora.down.weight", "_lora.up.weight")) for k in tensors)
    assert len(tensors) == 2 * 8 * 4  # 4 transformers x (attn1, attn2) x (q, k, v, out) in the v1 model
    assert any(k.startswith("down_blocks.2.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.")
               for k in tensors)

    base = load_default_model(SHIPPED)[0]
    assert meta["base_fingerprint"] == model_fingerprint(base)
    assert any(float(v.abs().max()) > 0 for k, v in tensors.items() if ".up." in k)  # it trained
    patched, report = SmoothLoraLoaderNode.execute(base, out.name, 1.0).args
    assert "applied 32 of 32" in report and "rank 8" in report and "not placed" not in report
    before, after = patched_weights(base), patched_weights(patched)
    key_map = comfy.lora.model_lora_keys_unet(base.model, {})
    for down_key in [k for k in tensors if k.endswith(".down.weight")]:
        target = key_map[down_key[: -len("_lora.down.weight")]]
        up = tensors[down_key.replace(".down.", ".up.")]
        torch.testing.assert_close(after[target], before[target] + up @ tensors[down_key], rtol=1e-5, atol=1e-6)
    assert sum(not torch.equal(before[k], after[k]) for k in before) == 32


def test_a_zero_up_lora_leaves_the_model_output_unchanged(training):
    from guidance_lab.nodes.bridge.default_model import load_default_model

    unet = load_default_model(SHIPPED)[0].model.diffusion_model
    gen = torch.Generator().manual_seed(3)
    x, context = torch.randn(2, 3, 32, 32, generator=gen), torch.randn(2, 77, 64, generator=gen)
    t = torch.tensor([10.0, 700.0])
    with torch.no_grad():
        reference = unet(x, timesteps=t, context=context)
        loras = training.add_lora(unet, 8, torch.Generator().manual_seed(0))
        assert len(loras) == 32 and all(float(l.down.abs().max()) > 0 for l in loras.values())
        assert all(float(l.up.abs().max()) == 0 for l in loras.values())
        assert torch.equal(unet(x, timesteps=t, context=context), reference)


@pytest.mark.parametrize("prediction", ["eps", "v", "flow"])
def test_regulariser_is_the_gradient_norm_of_x0_along_y(training, tmp_path, prediction):
    """v = ||grad_eps <x0_hat, y>|| as the trainer computes it equals an independent vector-Jacobian
    product and a central finite difference of <x0_hat, y>; L_reg follows the stated running
    average; and its weight gradient (the double backward) matches a finite difference."""
    from tools.training.train import noised_inputs

    trainer = trainer_for(training, with_prediction(tmp_path, prediction))
    unet = trainer.unet.double()
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for lora in trainer.loras.values():  # a LoRA that changes the model
            lora.up.normal_(0, 0.05, generator=gen)
    x0 = torch.rand(2, 3, 32, 32, generator=gen, dtype=torch.float64) * 2 - 1
    u = torch.tensor([0.3, 0.8], dtype=torch.float64)
    context = torch.randn(2, 77, 64, generator=gen, dtype=torch.float64)
    acp = None if trainer.acp is None else trainer.acp.double()

    def x0_hat(noise):
        xt, timesteps, _target, alpha, sigma = noised_inputs(prediction, acp, x0, u, noise)
        out = unet(xt, timesteps=timesteps, context=context)
        return training.predicted_x0(prediction, xt, out, alpha, sigma), sigma

    noise = torch.randn(2, 3, 32, 32, generator=gen, dtype=torch.float64)
    sigma = x0_hat(noise)[1]
    y = training.random_direction((2, 3, 32, 32), sigma, torch.Generator().manual_seed(9))
    # y ~ N(0, I) / sqrt(CHW) * sigma_t: sigma_t is sqrt(1 - abar_t) for eps/v, s for flow.
    expected_sigma = u if prediction == "flow" else (1 - acp[(u * 1000).long()]).sqrt()
    torch.testing.assert_close(sigma.flatten(), expected_sigma)
    unit = torch.randn((2, 3, 32, 32), generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(y, unit / math.sqrt(3 * 32 * 32) * sigma, rtol=0, atol=0)

    leaf = noise.clone().requires_grad_(True)
    v = training.variation_norms(x0_hat(leaf)[0], leaf, y)
    _out, vjp = torch.autograd.functional.vjp(lambda n: x0_hat(n)[0], noise, y)
    torch.testing.assert_close(v, vjp.flatten(1).norm(dim=1), rtol=1e-9, atol=1e-12)
    # central difference of f(eps) = <x0_hat(eps), y>_sample along a random w: <g, w>
    w = torch.randn(noise.shape, generator=gen, dtype=torch.float64)
    h = 1e-4
    with torch.no_grad():
        plus, minus = x0_hat(noise + h * w)[0], x0_hat(noise - h * w)[0]
    fd = ((plus - minus) * y).flatten(1).sum(1) / (2 * h)
    torch.testing.assert_close((vjp * w).flatten(1).sum(1), fd, rtol=1e-5, atol=1e-9)

    # L_reg = mean((v - a)^2) with a <- a + 0.01 (mean v - a); the first step starts a at mean v.
    step = training.StepVariation(average=0.5)
    reg = step(v)
    a = 0.5 + 0.01 * (float(v.detach().mean()) - 0.5)
    assert step.average == pytest.approx(a, rel=1e-12)
    torch.testing.assert_close(reg, ((v - a) ** 2).mean())
    assert training.StepVariation()(v.detach()) == pytest.approx(float(v.detach().var(unbiased=False)), rel=1e-9)

    # The double backward: d L_reg / d(one LoRA weight) against a finite difference with a fixed.
    lora = next(iter(trainer.loras.values()))
    reg.backward()
    direction = torch.randn(lora.up.shape, generator=gen, dtype=torch.float64)
    analytic = float((lora.up.grad * direction).sum())

    def reg_at(delta):
        with torch.no_grad():
            lora.up += delta * direction
        leaf = noise.clone().requires_grad_(True)
        value = float(((training.variation_norms(x0_hat(leaf)[0], leaf, y) - a) ** 2).mean().detach())
        with torch.no_grad():
            lora.up -= delta * direction
        return value

    numeric = (reg_at(1e-4) - reg_at(-1e-4)) / 2e-4
    assert analytic == pytest.approx(numeric, rel=1e-4, abs=1e-10)


def test_a_resumed_run_continues_at_its_checkpoint_exactly_as_an_uninterrupted_one(training, tmp_path, monkeypatch,
                                                                                   capsys):
    from safetensors.torch import load_file
    from safetensors import safe_open

    straight = tmp_path / "straight.safetensors"
    training.main(["--weights", str(SHIPPED), "--out", str(straight), "--steps", "4", *TINY])

    resumed = tmp_path / "resumed.safetensors"
    original = training.SmoothLoraTrainer.train_step

    def interrupted(self):
        if self.step == 3:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(training.SmoothLoraTrainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        training.main(["--weights", str(SHIPPED), "--out", str(resumed), "--steps", "4", *TINY])
    assert not resumed.exists()
    monkeypatch.setattr(training.SmoothLoraTrainer, "train_step", original)
    capsys.readouterr()
    training.main(["--weights", str(SHIPPED), "--out", str(resumed), "--steps", "4", *TINY])
    assert "at step 2" in capsys.readouterr().out  # the checkpoint of step 2, not step 3's lost work

    a, b = load_file(str(straight)), load_file(str(resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with safe_open(str(straight), framework="pt") as f, safe_open(str(resumed), framework="pt") as g:
        ma, mb = f.metadata(), g.metadata()
    for key in ("final_loss", "final_reg", "running_average", "steps"):
        assert ma[key] == mb[key]
    assert len(json.loads(mb["history"])) == 2 and json.loads(mb["history"])[1]["from_step"] == 2


def test_a_checkpoint_of_other_settings_is_not_resumed(training, tmp_path):
    out = tmp_path / "lora.safetensors"
    training.main(["--weights", str(SHIPPED), "--out", str(out), "--steps", "1", *TINY])
    with pytest.raises(SystemExit, match="other settings"):
        training.main(["--weights", str(SHIPPED), "--out", str(out), "--steps", "2", "--rank", "4", *TINY])


def test_istd_study_measures_with_and_without_the_lora(training, tmp_path):
    """A zero-up LoRA (the untrained start) gives the base model's ISTD exactly; a trained one runs."""
    from safetensors.torch import load_file, save_file

    from tools.benchmark.smooth_istd import istd_study

    out = tmp_path / "lora.safetensors"
    training.main(["--weights", str(SHIPPED), "--out", str(out), "--steps", "1", *TINY])
    zero = tmp_path / "zero.safetensors"
    save_file({k: torch.zeros_like(v) if ".up." in k else v for k, v in load_file(str(out)).items()}, str(zero))
    study = istd_study(SHIPPED, zero, n_pairs=1, frames=3, steps=2, strip=tmp_path / "strip.png")
    assert study["base"]["mean_istd"] == study["lora"]["mean_istd"] and study["reduction"] == 0
    assert (tmp_path / "strip.png").exists()
    study = istd_study(SHIPPED, out, n_pairs=1, frames=3, steps=2)
    assert all(math.isfinite(study[n]["mean_istd"]) for n in ("base", "lora")) and "reduction" in study
