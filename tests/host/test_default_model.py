"""The shipped default model in stock ComfyUI graphs: loader node, CLIP, MODEL, VAE, bad files."""

import json

import pytest
import torch

from guidance_lab.nodes.bridge.default_model import WeightsError, load_default_model
from guidance_lab.nodes.extension import NODES
from guidance_lab.nodes import default_model as loader_module
from guidance_lab.default_model import DIT32, FLOW32, SHIPPED as SHIPPED_NAMES, VPRED32
from guidance_lab.nodes.default_model import DEFAULT_WEIGHTS, WEIGHTS_DIR, DefaultModelLoaderNode
from guidance_lab.nodes.validation import NodeInputError

from .comfy_graph import encode, node_out

pytestmark = pytest.mark.host

SHIPPED = WEIGHTS_DIR / VPRED32  # the eps-family file, for the metadata tests


@pytest.fixture(scope="module", params=SHIPPED_NAMES)
def default_model(host, request):
    """Each shipped default model in turn (flow UNet, eps-family UNet, flow DiT)."""
    return node_out(DefaultModelLoaderNode.execute(request.param))


def ksample(model, positive, negative, cfg, batch=2, steps=4, seed=0):
    import nodes
    from comfy_extras.nodes_chroma_radiance import EmptyChromaRadianceLatentImage

    latent = node_out(EmptyChromaRadianceLatentImage.execute(width=32, height=32, batch_size=batch))[0]
    return nodes.KSampler().sample(model, seed, steps, cfg, "euler", "normal", positive, negative, latent)[0]


def test_shipped_files_are_small_and_record_their_training():
    from safetensors import safe_open

    assert sum((WEIGHTS_DIR / name).stat().st_size for name in SHIPPED_NAMES) <= 25 * 1024 * 1024
    families = {}
    for name in SHIPPED_NAMES:
        with safe_open(str(WEIGHTS_DIR / name), framework="pt") as f:
            meta = f.metadata()
        config = json.loads(meta["training_config"])
        assert int(meta["steps"]) > 0 and float(meta["final_loss"]) > 0
        assert int(meta["data_seed"]) == config["data_seed"]
        assert 0 < config["p_uncond"] < 1  # prompt dropout: the unconditional prediction is trained
        history = json.loads(meta["history"])  # every command that trained it, with its hardware
        assert history and all("hardware" in h for h in history if "run" in h)
        families[name] = (meta["family"], meta["prediction"], json.loads(meta["sampling_settings"]),
                          meta["architecture"])
    assert families[FLOW32][:2] == ("flow", "flow") and families[FLOW32][3] == "unet"
    assert families[DIT32][:2] == ("flow", "flow") and families[DIT32][3] == "flux"
    assert families[VPRED32][:2] == ("eps", "v") and families[VPRED32][2]["zsnr"] is True


def test_loader_node_is_registered_with_tooltips():
    assert DefaultModelLoaderNode in NODES
    schema = DefaultModelLoaderNode.define_schema()
    assert schema.node_id == "GuidanceLab_DefaultModelLoader"
    assert schema.display_name == "Default Model Loader (Guidance Lab)"
    assert all(i.tooltip for i in schema.inputs)
    assert DEFAULT_WEIGHTS in schema.inputs[0].options


def test_stock_nodes_sample_a_32px_image(default_model):
    import nodes

    model, clip, vae = default_model
    positive, negative = encode(clip, "a red circle on a white background"), encode(clip, "")
    assert positive[0][0].shape == (1, 77, 64)
    latent = ksample(model, positive, negative, cfg=5.0)
    assert latent["samples"].shape == (2, 3, 32, 32)
    image = nodes.VAEDecode().decode(vae, latent)[0]
    assert image.shape == (2, 32, 32, 3)
    assert torch.isfinite(image).all() and image.min() >= 0 and image.max() <= 1


def test_sampler_custom_advanced_and_cfg_matters(default_model):
    from comfy_extras import nodes_custom_sampler as cs

    from .comfy_graph import sample

    model, clip, _vae = default_model
    positive, negative = encode(clip, "a blue star on a black background"), encode(clip, "")
    latent = {"samples": torch.zeros(1, 3, 32, 32)}
    outs = {}
    for cfg in (1.0, 5.0):
        guider = node_out(cs.CFGGuider.execute(model, positive, negative, cfg))[0]
        outs[cfg] = sample(guider, "euler", 4, latent, seed=3)
        assert torch.isfinite(outs[cfg]).all()
    assert (outs[1.0] - outs[5.0]).abs().max() > 1e-3


def test_prompt_changes_the_image(default_model):
    model, clip, _vae = default_model
    negative = encode(clip, "")
    a = ksample(model, encode(clip, "a red square on a white background"), negative, 5.0, batch=1)
    b = ksample(model, encode(clip, "a blue ring on a black background"), negative, 5.0, batch=1)
    assert (a["samples"] - b["samples"]).abs().mean() > 1e-2


def test_pixel_space_vae_round_trip(default_model):
    import nodes

    from tools.training.dataset import make_batch

    _model, _clip, vae = default_model
    images, _prompts, _ = make_batch(1, 0, 2, 32)
    pixels = torch.from_numpy(images)
    latent = nodes.VAEEncode().encode(vae, pixels)[0]["samples"]
    # The model is trained on exactly this latent: the image mapped to [-1, 1].
    torch.testing.assert_close(latent, pixels.permute(0, 3, 1, 2) * 2 - 1)
    decoded = nodes.VAEDecode().decode(vae, {"samples": latent})[0]
    torch.testing.assert_close(decoded, pixels, atol=1e-6, rtol=0)


def test_truncated_file_gives_a_clear_error(tmp_path, host):
    broken = tmp_path / "truncated.safetensors"
    data = SHIPPED.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated or corrupted"):
        load_default_model(broken)


def test_loader_node_names_itself_and_its_input(tmp_path, host, monkeypatch):
    (tmp_path / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    monkeypatch.setattr(loader_module, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(NodeInputError, match=r"Default Model Loader \(Guidance Lab\): input 'weights'"):
        DefaultModelLoaderNode.execute("garbage.safetensors")
    with pytest.raises(NodeInputError, match="input 'weights' is 'missing.safetensors'; choose one of"):
        DefaultModelLoaderNode.execute("missing.safetensors")
    with pytest.raises(NodeInputError, match="input 'weights'"):
        DefaultModelLoaderNode.execute("../outside.safetensors")


def test_file_of_another_model_is_refused(tmp_path, host):
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(other), metadata={"format": "something else"})
    with pytest.raises(WeightsError, match="metadata 'format'"):
        load_default_model(other)


@pytest.mark.parametrize("prediction, zsnr", [("eps", False), ("v", True)])
def test_the_file_says_how_the_model_predicts_and_what_schedule_it_was_trained_on(host, tmp_path,
                                                                                  prediction, zsnr):
    from safetensors import safe_open
    from safetensors.torch import save_file

    import comfy.model_sampling

    with safe_open(str(SHIPPED), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = dict(f.metadata())
    settings = {"beta_schedule": "linear", "linear_start": 0.00085, "linear_end": 0.012, "zsnr": zsnr}
    save_file(tensors, str(tmp_path / "m.safetensors"),
              metadata={**meta, "prediction": prediction, "sampling_settings": json.dumps(settings)})
    model = load_default_model(tmp_path / "m.safetensors")[0]
    sampling = model.get_model_object("model_sampling")
    expected = comfy.model_sampling.V_PREDICTION if prediction == "v" else comfy.model_sampling.EPS
    assert isinstance(sampling, expected)
    # zero terminal SNR: ComfyUI's rescale puts the last sigma near 4500 instead of 14.6
    assert (float(sampling.sigma_max) > 1000) == zsnr


def _with_metadata(source, target, **changes):
    """A copy of a weights file with some metadata fields changed (None removes a field)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), framework="pt") as f:
        metadata = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for key, value in changes.items():
        if value is None:
            metadata.pop(key, None)
        else:
            metadata[key] = value
    save_file(tensors, str(target), metadata=metadata)
    return target


@pytest.mark.parametrize("changes, message", [
    ({"family": None}, "metadata 'family' is None"),
    ({"family": "flow"}, "belongs to the 'eps' family"),
    ({"prediction": "flow"}, "metadata 'family' is 'eps'"),
    ({"prediction": "x0"}, "metadata 'prediction' is 'x0'"),
    ({"prediction": "flow", "family": "flow"}, "sampling_settings lack"),
], ids=["missing-family", "wrong-family", "flow-prediction-eps-family", "unknown-prediction", "flow-without-shift"])
def test_mislabelled_family_is_refused_naming_node_and_input(tmp_path, host, monkeypatch, changes, message):
    """A file whose family, prediction type and schedule disagree would sample noise: refused."""
    _with_metadata(SHIPPED, tmp_path / "mislabelled.safetensors", **changes)
    monkeypatch.setattr(loader_module, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(NodeInputError, match=r"Default Model Loader \(Guidance Lab\): input 'weights'") as err:
        DefaultModelLoaderNode.execute("mislabelled.safetensors")
    assert message in str(err.value)


def _with_tensors(source, target, change):
    """A copy of a weights file with ``change(tensors, metadata)`` applied."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), framework="pt") as f:
        metadata = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    change(tensors, metadata)
    save_file(tensors, str(target), metadata=metadata)


def _wrong_shape(tensors, _meta):
    key = next(k for k in tensors if k.startswith("diffusion_model.") and tensors[k].ndim == 2)
    tensors[key] = torch.zeros(tensors[key].shape[0] + 1, tensors[key].shape[1])


def _bad_token_ids(tensors, _meta):
    tensors["text_encoder.token_ids"] = -tensors["text_encoder.token_ids"] - 1


def _text_config_list(_tensors, meta):
    meta["text_config"] = "[1, 2]"


def _text_config_bad_value(_tensors, meta):
    config = json.loads(meta["text_config"])
    meta["text_config"] = json.dumps({**config, "hidden_act": "no_such_activation"})


@pytest.mark.parametrize("change, message", [
    (_wrong_shape, "weights do not fit the config"), (_bad_token_ids, "outside the vocabulary"),
    (_text_config_list, "'text_config' is not a JSON object"), (_text_config_bad_value, "text_config"),
], ids=["tensor-of-another-shape", "negative-token-ids", "text-config-not-an-object", "text-config-unbuildable"])
def test_files_whose_tensors_or_text_config_do_not_fit_are_refused_naming_node_and_input(
        tmp_path, host, monkeypatch, change, message):
    _with_tensors(SHIPPED, tmp_path / "bad.safetensors", change)
    monkeypatch.setattr(loader_module, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(NodeInputError, match=r"Default Model Loader \(Guidance Lab\): input 'weights'") as err:
        DefaultModelLoaderNode.execute("bad.safetensors")
    assert message in str(err.value)


def test_shape_audit_reports_what_the_analyser_reads_in_the_models_samples(tmp_path):
    """tools/quality/audit_shapes.py: per prompted shape, what the analyser reads in the model's
    own CFG samples, with the misreads' features and a contact sheet."""
    from tools.quality import audit_shapes
    from tools.training.dataset import BACKGROUNDS, COLOURS

    assert audit_shapes.main(["--weights", VPRED32, "--shapes", "circle", "square", "--seeds", "1", "--steps", "6",
                              "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "audit.json").read_text())
    assert set(report["read_as"]) == {"circle", "square"}
    prompts = len(COLOURS) * len(BACKGROUNDS)  # one seed: every colour x backdrop prompt once
    assert sum(report["read_as"]["circle"].values()) == prompts == sum(report["read_as"]["square"].values())
    for miss in report["misread"]:
        assert set(miss["features"]) == {"hole", "solidity", "rect_fill", "lobes"}
    assert (tmp_path / "misread.png").is_file() == bool(report["misread"])
