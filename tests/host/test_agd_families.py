"""AGD on the model families people run (issue 31): tiny random-weight SDXL, SD3, Flux and
Wan 2.1 models built through ComfyUI's own classes (families.py), with the AGD nodes.

SDXL takes cross-attention adapters with its pooled conditioning (``y``) as one more token;
SD3 (MMDiT joint blocks), Flux (double and single stream blocks) and Wan (5-D video latents)
take offset adapters through ComfyUI's ``patches_replace["dit"]`` block replacement. Lumina 2
(NextDiT) takes them through the post-block patch (``patches["double_block"]``) where the host's
NextDiT calls it (0.33); where it does not (0.3.75) it is refused, naming the node, the input and
why."""

import numpy as np
import pytest
import torch

from guidance_lab.guiders.agd import AdapterConfig, AdapterSet, adapter_file
from guidance_lab.nodes.agd import AGDAdapterLoaderNode, AGDGuiderNode, AGDTrainNode
from guidance_lab.nodes.validation import NodeInputError

from .comfy_graph import node_out, sample
from .families import FAMILIES, tiny_model

pytestmark = pytest.mark.host

def _lumina_served() -> bool:
    import comfy.ldm.lumina.model

    from guidance_lab.nodes.bridge.agd import calls_post_block_patch

    return calls_post_block_patch(comfy.ldm.lumina.model.NextDiT)


LUMINA_SERVED = _lumina_served()
SUPPORTED = ("sdxl", "sd3", "flux", "wan", *(("lumina2",) if LUMINA_SERVED else ()))
SMALL = AdapterConfig(width=8, fourier_features=8, mlp_hidden=16, time_features=8, seed=0)
COUNT_KEY = "test_agd_families_count"


def adapters_for(model, trained: bool, kind=None) -> AdapterSet:
    from guidance_lab.nodes.bridge.agd import adapter_layout

    kind, layout = adapter_layout(model, kind)
    adapters = AdapterSet(layout, SMALL, kind)
    if trained:  # stands in for training: every weight moved, the zero output layers too
        g = torch.Generator().manual_seed(1)
        # attention adapters' softmax saturates on one prompt token (hiding the scale token) under large random weights
        spread = 0.5 if kind in (None, "offset") else 0.1
        with torch.no_grad():
            for p in adapters.parameters():
                p.add_(torch.randn(p.shape, generator=g) * spread)
    return adapters


def save_adapter(model, path, trained: bool, scale_range=(1.0, 8.0), kind=None):
    from guidance_lab.nodes.bridge.agd import architecture_of, base_parameter_count
    from guidance_lab.nodes.bridge.fingerprint import base_model_fingerprint

    made = adapter_file.AdapterFile(adapters_for(model, trained, kind), base_model_fingerprint(model),
                                    architecture_of(model), scale_range, {}, "test", base_parameter_count(model))
    return adapter_file.save(path, made)


def counted(model):
    """A clone whose model calls are counted by a wrapper of the test's own (not the pack's
    NFE accounting): {"calls": model evaluations, "rows": samples evaluated}."""
    import comfy.patcher_extension

    counter = {"calls": 0, "rows": 0}

    def count(executor, x, *args, **kwargs):
        counter["calls"] += 1
        counter["rows"] += x.shape[0]
        return executor(x, *args, **kwargs)

    clone = model.clone()
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, COUNT_KEY, count)
    return clone, counter


def latent(name: str, batch: int) -> dict:
    return {"samples": torch.zeros((batch, *FAMILIES[name]))}


def cond_only(model, positive, negative, name, batch, steps=3, seed=4):
    from comfy_extras import nodes_custom_sampler as cs

    guider = node_out(cs.CFGGuider.execute(model, positive, negative, 1.0))[0]  # cfg 1: D_c alone
    return sample(guider, "euler", steps, latent(name, batch), seed=seed)


def agd(model, positive, name, scale, batch, steps=3, seed=4):
    guider = node_out(AGDGuiderNode.execute(model, positive, scale))[0]
    return guider, sample(guider, "euler", steps, latent(name, batch), seed=seed)


@pytest.fixture(scope="module")
def models(host):
    return {name: tiny_model(name) for name in (*SUPPORTED, "lumina2")}


@pytest.mark.parametrize("name", SUPPORTED)
def test_layout_names_the_blocks_the_hooks_serve(models, name):
    from guidance_lab.nodes.bridge.agd import adapter_layout

    model = models[name][0]
    kind, layout = adapter_layout(model)
    network = model.model.diffusion_model
    if name == "sdxl":  # cross-attention adapters with SDXL's pooled y (adm channels) as a token
        assert kind == "cross_attention" and all(dims[2] == model.model.adm_channels for dims in layout.values())
    else:
        assert kind == "offset"
        blocks = {"sd3": len(getattr(network, "joint_blocks", [])), "wan": len(getattr(network, "blocks", [])),
                  "lumina2": len(getattr(network, "layers", [])),
                  "flux": len(getattr(network, "double_blocks", [])) + len(getattr(network, "single_blocks", []))}
        assert len(layout) == blocks[name]
        if name == "flux":
            assert {n.rsplit("_", 1)[0] for n in layout} == {"double_block", "single_block"}


@pytest.mark.parametrize("name", SUPPORTED)
def test_zero_initialised_adapters_change_nothing_and_cost_one_evaluation_per_step(models, name, output_dir):
    model, positive, negative = models[name]
    save_adapter(model, output_dir / "agd" / f"{name}_zero.safetensors", trained=False)
    counting, counter = counted(model)
    patched, report = node_out(AGDAdapterLoaderNode.execute(counting, f"agd/{name}_zero.safetensors"))
    assert "trained for scales 1 to 8" in report
    guider, out = agd(patched, positive, name, 6.0, batch=2)
    assert counter == {"calls": 3, "rows": 6}  # one evaluation per step, of the 2 samples' prompt only
    assert guider.last_record.nfe_per_step == [1, 1, 1]
    assert out.shape == (2, *FAMILIES[name])
    assert torch.equal(out, cond_only(model, positive, negative, name, batch=2))


@pytest.mark.parametrize("name", SUPPORTED)
def test_trained_adapters_act_with_the_scale_batch_independent_and_leave_the_base_alone(models, name, output_dir):
    model, positive, negative = models[name]
    base = cond_only(model, positive, negative, name, batch=1)
    options_before = repr(model.model_options)
    save_adapter(model, output_dir / f"{name}_trained.safetensors", trained=True)
    patched = node_out(AGDAdapterLoaderNode.execute(model, f"{name}_trained.safetensors"))[0]
    _, at2 = agd(patched, positive, name, 2.0, batch=1)
    _, at6 = agd(patched, positive, name, 6.0, batch=1)
    assert (at2 - base).abs().max() > 1e-4 and (at2 - at6).abs().max() > 1e-4
    _, pair = agd(patched, positive, name, 6.0, batch=2)
    torch.testing.assert_close(pair[:1], at6, atol=1e-4, rtol=1e-4)
    # the base MODEL is untouched; without an AGD scale in the run (stock CFG) the adapters are off
    assert repr(model.model_options) == options_before
    assert torch.equal(cond_only(patched, positive, negative, name, batch=1), base)


TRANSFORMERS = tuple(name for name in SUPPORTED if name != "sdxl")


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_block_attention_adapters_start_as_the_base_then_act_per_sample_at_one_evaluation(models, name, output_dir):
    model, positive, negative = models[name]
    base = cond_only(model, positive, negative, name, batch=2)
    save_adapter(model, output_dir / "agd" / f"{name}_block_zero.safetensors", trained=False, kind="block_attention")
    counting, counter = counted(model)
    patched = node_out(AGDAdapterLoaderNode.execute(counting, f"agd/{name}_block_zero.safetensors"))[0]
    guider, out = agd(patched, positive, name, 6.0, batch=2)
    assert counter == {"calls": 3, "rows": 6} and guider.last_record.nfe_per_step == [1, 1, 1]
    assert torch.equal(out, base)
    save_adapter(model, output_dir / f"{name}_block.safetensors", trained=True, kind="block_attention")
    patched = node_out(AGDAdapterLoaderNode.execute(model, f"{name}_block.safetensors"))[0]
    _, at2 = agd(patched, positive, name, 2.0, batch=1)
    _, at6 = agd(patched, positive, name, 6.0, batch=1)
    assert (at2 - base[:1]).abs().max() > 1e-4 and (at2 - at6).abs().max() > 1e-4
    _, pair = agd(patched, positive, name, 6.0, batch=2)
    torch.testing.assert_close(pair[:1], at6, atol=1e-4, rtol=1e-4)
    # the offset adapters of the same model differ from these: a file says which it holds
    save_adapter(model, output_dir / f"{name}_offset.safetensors", trained=True)
    offset = node_out(AGDAdapterLoaderNode.execute(model, f"{name}_offset.safetensors"))[0]
    assert (agd(offset, positive, name, 6.0, batch=1)[1] - at6).abs().max() > 1e-4


class FakeClip:
    """A text encoder of the family's conditioning shapes (no CLIP can be downloaded): the same
    text always encodes to the same embedding (and pooled output, where the family has one)."""

    def __init__(self, positive, attention_mask: bool = False, padded: bool = True):
        self.tokens, self.width = positive[0][0].shape[1:]
        pooled = positive[0][1].get("pooled_output")
        self.pooled = None if pooled is None else pooled.shape[-1]
        self.attention_mask = attention_mask  # Lumina 2's encoder gives one (its num_tokens comes from it)
        self.padded = padded  # False: a token per word plus 2, as an encoder that does not pad (Gemma)

    def length(self, text) -> int:
        return self.tokens if self.padded else 2 + len(text.split())

    def tokenize(self, text):
        return text

    def encode_from_tokens(self, tokens, return_pooled=False, return_dict=False):
        g = torch.Generator().manual_seed(sum(map(ord, tokens)) + 7 * len(tokens))
        cond = torch.randn(1, self.length(tokens), self.width, generator=g)
        pooled = None if self.pooled is None else torch.randn(1, self.pooled, generator=g)
        if return_dict:  # as ComfyUI's CLIP: the pooled output is None where the encoder has none
            mask = ({"attention_mask": torch.ones(1, self.length(tokens), dtype=torch.long)} if self.attention_mask
                    else {})
            return {"cond": cond, "pooled_output": pooled, **mask}
        return (cond, pooled) if return_pooled else cond


@pytest.mark.parametrize("name, kind", [*((n, "offset") for n in SUPPORTED), ("flux", "block_attention"),
                                        ("wan", "block_attention"), ("sdxl", "block_attention")])
def test_train_node_trains_then_loader_and_guider_sample(models, name, kind, output_dir):
    import folder_paths

    from guidance_lab.guiders.agd.trajectories import TrajectoryStore

    model, _positive, _negative = models[name]
    clip = FakeClip(models[name][1], attention_mask=name == "lumina2")
    temp_before = folder_paths.get_temp_directory()
    folder_paths.set_temp_directory(str(output_dir / "temp"))
    try:
        with torch.inference_mode():  # as ComfyUI's executor runs nodes
            file, curve, report = node_out(AGDTrainNode.execute(
                model, clip, "a red circle\na blue star", 2.0, 6.0, 3, 3, 4, 1e-2, 8, 64, 0, f"agd/{name}_{kind}",
                transformer_adapter=kind))
    finally:
        folder_paths.set_temp_directory(temp_before)
    import comfy.model_management

    # 0.33's training flag (the differentiable RoPE for Flux) is set for the loop only (0.3.75 has none)
    assert vars(comfy.model_management).get("in_training", False) is False
    assert file == f"agd/{name}_{kind}.safetensors" and "2 prompts, 3 steps" in report and curve.shape[-1] == 3
    made = adapter_file.load(output_dir / file)
    assert made.architecture["architecture"] == {"sdxl": "unet", "sd3": "mmdit", "lumina2": "nextdit"}.get(name, name)
    assert made.adapters.kind == ("cross_attention" if name == "sdxl" else kind)
    # every block's adapter learnt: gradients reach the first blocks through all later ones
    assert all(p.abs().max() > 0 for n, p in made.adapters.named_parameters() if n.endswith("out.weight"))
    data = next((output_dir / "temp" / "guidance_lab_agd").glob("data_*"))
    store = TrajectoryStore.open(data)
    assert store.states.shape[1:] == (FAMILIES[name][0], *((1,) if len(FAMILIES[name]) == 4 else ()), 8, 8)
    if name in ("sdxl", "sd3", "flux"):  # the pooled conditioning, stored with the trajectories
        assert "y" in store.meta["extras"] and store.extras["y"].shape[0] == 2
    if name == "sdxl":
        assert store.extras["y"].shape[1] == model.model.adm_channels
    if name == "lumina2":  # num_tokens: one number per model call, stored per prompt
        assert store.meta["constants"] == {"num_tokens": "int"}
        assert store.batch_extras(np.arange(4), "cpu")["num_tokens"] == (clip.tokens,) * 4
    positive = [[torch.from_numpy(store.prompts[:1].astype("float32")),
                 {} if clip.pooled is None else {"pooled_output": clip.encode_from_tokens("a red circle", True)[1]}]]
    patched = node_out(AGDAdapterLoaderNode.execute(model, file))[0]
    shape = (FAMILIES[name][0], *((1,) if len(FAMILIES[name]) == 4 else ()), 8, 8)
    guider = node_out(AGDGuiderNode.execute(patched, positive, 4.0))[0]
    out = sample(guider, "euler", 3, {"samples": torch.zeros((2, *shape))}, seed=1)
    assert torch.isfinite(out).all() and guider.last_record.nfe_per_step == [1, 1, 1]


def test_wan_trains_on_multi_frame_videos_and_samples_them(models, output_dir):
    """latent_frames: Wan's adapters learn from runs of T latent frames ([C, T, H, W] trajectories)
    and the AGD Guider samples videos of that length, one evaluation per step."""
    import folder_paths

    from guidance_lab.guiders.agd.trajectories import TrajectoryStore

    model = models["wan"][0]
    clip = FakeClip(models["wan"][1])
    temp_before = folder_paths.get_temp_directory()
    folder_paths.set_temp_directory(str(output_dir / "temp_frames"))
    try:
        with torch.inference_mode():
            file, curve, report = node_out(AGDTrainNode.execute(
                model, clip, "a red circle\na blue star", 2.0, 6.0, 3, 3, 4, 1e-2, 8, 64, 0, "agd/wan_frames",
                False, 3))
    finally:
        folder_paths.set_temp_directory(temp_before)
    store = TrajectoryStore.open(next((output_dir / "temp_frames" / "guidance_lab_agd").glob("data_*")))
    channels = FAMILIES["wan"][0]
    assert store.states.shape[1:] == (channels, 3, 8, 8)
    made = adapter_file.load(output_dir / file)
    assert all(p.abs().max() > 0 for n, p in made.adapters.named_parameters() if n.endswith("out.weight"))
    positive = [[torch.from_numpy(store.prompts[:1].astype("float32")), {}]]
    patched = node_out(AGDAdapterLoaderNode.execute(model, file))[0]
    guider = node_out(AGDGuiderNode.execute(patched, positive, 4.0))[0]
    out = sample(guider, "euler", 3, {"samples": torch.zeros((2, channels, 3, 8, 8))}, seed=1)
    assert out.shape == (2, channels, 3, 8, 8) and torch.isfinite(out).all()
    assert guider.last_record.nfe_per_step == [1, 1, 1]


def test_latent_frames_on_an_image_model_is_refused(models):
    model = models["sdxl"][0]
    with pytest.raises(NodeInputError) as err:
        AGDTrainNode.execute(model, FakeClip(models["sdxl"][1]), "a red circle", 2.0, 6.0, 3, 3, 4, 1e-2, 8, 64, 0,
                             "agd/never", False, 2)
    assert str(err.value).startswith(f"{AGDTrainNode.DISPLAY}: input 'latent_frames'")


@pytest.mark.parametrize("made_for, used_on", [("flux", "sd3"), ("sd3", "wan"), ("wan", "flux"), ("sdxl", "flux"),
                                               ("flux", "sdxl")])
def test_an_adapter_for_one_family_is_refused_on_another(models, made_for, used_on, output_dir):
    from guidance_lab.nodes.bridge.agd import ARCHITECTURE_NAMES, architecture_name

    save_adapter(models[made_for][0], output_dir / "other.safetensors", trained=False)
    target = models[used_on][0]
    with pytest.raises(NodeInputError, match=r"AGD Adapter Loader \(Guidance Lab\): input 'adapter_file'") as err:
        AGDAdapterLoaderNode.execute(target, "other.safetensors")
    message = str(err.value)
    assert f"made for a {ARCHITECTURE_NAMES[architecture_name(models[made_for][0])]} model" in message
    assert f"this model is {ARCHITECTURE_NAMES[architecture_name(target)]}" in message


def test_lumina2_is_served_where_the_host_calls_the_post_block_patch_and_refused_where_not(models, output_dir):
    """0.33's NextDiT calls ``patches["double_block"]`` after each layer (the tests above train and
    sample it); 0.3.75's has no hook at all, and both nodes say so, naming the node and the input."""
    from guidance_lab.nodes.agd import trainable_problem
    from guidance_lab.nodes.bridge.agd import architecture_name

    model = models["lumina2"][0]
    problem = trainable_problem(model)
    if LUMINA_SERVED:
        assert problem == "" and architecture_name(model) == "nextdit"
        return
    assert "Lumina 2" in problem and "patches_replace 'dit'" in problem, problem
    with pytest.raises(NodeInputError, match=r"AGD Train Adapter \(Guidance Lab\): input 'model' is a Lumina 2"):
        AGDTrainNode.execute(model, FakeClip(models["lumina2"][1]), "a red circle", 1.0, 8.0, 2, 2, 2, 1e-3, 8, 64,
                             0, "agd/never")
    assert not list(output_dir.glob("agd/never*"))
    save_adapter(models["flux"][0], output_dir / "flux.safetensors", trained=False)
    with pytest.raises(NodeInputError, match=r"AGD Adapter Loader \(Guidance Lab\): input 'model' is a Lumina 2"):
        AGDAdapterLoaderNode.execute(model, "flux.safetensors")


def test_the_offset_adapter_composes_with_a_block_replacement_already_there(models, output_dir):
    """Another node's ``patches_replace["dit"]`` entry on the same block keeps running: the AGD
    replacement calls it in place of the original block."""
    model, positive, negative = models["flux"]
    calls = []

    def other(args, extra):
        calls.append(1)
        return extra["original_block"](args)

    other_model = model.clone()
    other_model.set_model_patch_replace(other, "dit", "double_block", 0)
    save_adapter(model, output_dir / "zero.safetensors", trained=False)
    patched = node_out(AGDAdapterLoaderNode.execute(other_model, "zero.safetensors"))[0]
    _, out = agd(patched, positive, "flux", 4.0, batch=1)
    assert len(calls) == 3
    assert torch.equal(out, cond_only(model, positive, negative, "flux", batch=1))


@pytest.mark.parametrize("name", SUPPORTED)
def test_adapters_run_on_the_weights_the_model_runs_with_a_lora_included(models, name, output_dir):
    """A weight patch (LoRA-style) keeps the base fingerprint: the adapter loads onto the patched
    model, and its zero-initialised version leaves that model's output exactly as it is."""
    model, positive, negative = models[name]
    lora = model.clone()
    key = next(k for k, v in lora.model_state_dict().items()
               if k.startswith("diffusion_model.") and k.endswith(".weight") and v.ndim == 2)
    lora.add_patches({key: (torch.full_like(lora.model_state_dict()[key], 0.05),)}, 1.0)
    save_adapter(model, output_dir / "zero.safetensors", trained=False)
    patched = node_out(AGDAdapterLoaderNode.execute(lora, "zero.safetensors"))[0]
    _, out = agd(patched, positive, name, 4.0, batch=1)
    expected = cond_only(lora, positive, negative, name, batch=1)
    assert torch.equal(out, expected) and not torch.equal(expected, cond_only(model, positive, negative, name, 1))


def test_flux_dev_guidance_is_stored_with_the_trajectories_and_given_to_the_student(host, output_dir):
    """Flux dev's distilled guidance input (``guidance``, 3.5 unless the conditioning says
    otherwise) is part of what the teacher saw: stored per prompt beside ``y``, and passed to
    the student's calls, so its training loss starts at the teacher's own output."""
    import folder_paths

    from guidance_lab.guiders.agd.trajectories import TrajectoryStore
    from guidance_lab.nodes.bridge.agd import AGDAdapters, adapted_call, adapter_layout

    from .tiny_families import tiny_model as dev_model

    model, positive, _negative, _shape = dev_model("flux")
    assert model.model.diffusion_model.params.guidance_embed
    temp_before = folder_paths.get_temp_directory()
    folder_paths.set_temp_directory(str(output_dir / "temp"))
    try:
        with torch.inference_mode():
            file = node_out(AGDTrainNode.execute(model, FakeClip(positive), "a red circle\na blue star", 1.0, 1.0, 2,
                                                 2, 2, 1e-3, 8, 64, 0, "agd/dev"))[0]
    finally:
        folder_paths.set_temp_directory(temp_before)
    store = TrajectoryStore.open(next((output_dir / "temp" / "guidance_lab_agd").glob("data_*")))
    assert store.meta["extras"] == ["guidance", "y"] and store.extras["guidance"][:].tolist() == [3.5, 3.5]
    # at scale 1 CFG is the conditional output: zero adapters with the stored extras reproduce it
    import numpy as np

    rows = np.arange(len(store))
    x, sigma, context, scale, target = store.batch(rows, "cpu")
    kind, layout = adapter_layout(model)
    zero = AGDAdapters(AdapterSet(layout, SMALL, kind), (1.0, 1.0), "", architecture="flux")
    with torch.no_grad():
        out = adapted_call(model, zero, x, sigma, context, scale, store.batch_extras(rows, "cpu"))
        without = adapted_call(model, zero, x, sigma, context, scale, {"y": store.batch_extras(rows, "cpu")["y"]})
    assert (without - target).abs().max() > 0.1  # the guidance input matters to this model
    torch.testing.assert_close(out, target, atol=2e-2, rtol=2e-2)  # targets are stored as float16
    assert adapter_file.load(output_dir / file).architecture["architecture"] == "flux"


def test_samples_differing_in_a_constant_conditioning_are_evaluated_apart(models):
    """Lumina 2's num_tokens is one number per model call (ComfyUI never batches conds whose
    constants differ): a training batch mixing values is evaluated one call per value, in order.
    (The grouping is the trainer's own; on 0.3.75 the adapters' hook is simply not called.)"""
    from guidance_lab.nodes.bridge.agd import AGDAdapters, adapted_call

    model, positive, _negative = models["lumina2"]
    adapters = AdapterSet({"double_block_0": (64, 32, 0)}, SMALL, "offset")
    agd = AGDAdapters(adapters, (1.0, 8.0), "", architecture="nextdit",
                      model_sampling=model.get_model_object("model_sampling"))
    g = torch.Generator().manual_seed(3)
    x = torch.randn((3, *FAMILIES["lumina2"]), generator=g)
    sigma, scale = torch.tensor([0.9, 0.5, 0.7]), torch.tensor([2.0, 5.0, 3.0])
    context = torch.randn(3, 8, 32, generator=g)
    seen = []  # what the network was called with (a test-only hook, removed below)
    hook = model.model.diffusion_model.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append((args[0].shape[0], args[3] if len(args) > 3 else kwargs["num_tokens"])),
        with_kwargs=True)
    try:
        with torch.no_grad():
            mixed = adapted_call(model, agd, x, sigma, context, scale,
                                 {"num_tokens": (8, 5, 8)})
            calls, seen[:] = list(seen), []
            alone = [adapted_call(model, agd, x[i:i + 1], sigma[i:i + 1], context[i:i + 1], scale[i:i + 1],
                                  {"num_tokens": n}) for i, n in enumerate((8, 5, 8))]
    finally:
        hook.remove()
    assert sorted(calls) == [(1, 5), (2, 8)]  # one call per value, each with its own samples
    assert torch.allclose(mixed, torch.cat(alone), atol=1e-5)  # and the batch's order kept


@pytest.mark.parametrize("name", [n for n in ("flux", "lumina2") if n in SUPPORTED])
def test_prompts_of_different_lengths_train_each_as_the_encoder_gave_it(models, name, output_dir):
    """An encoder that does not pad (Lumina 2's Gemma; T5 past its minimum) gives prompts of
    different token counts: the store pads them, the teacher's CFG runs and the student's calls
    see each prompt unpadded (a padded prompt would be another prompt to these models)."""
    import folder_paths

    from guidance_lab.guiders.agd.trajectories import TEXT_TOKENS, TrajectoryStore
    from guidance_lab.nodes.bridge.agd import AGDAdapters, adapted_call
    from guidance_lab.nodes.bridge.agd_training import cfg_trajectories

    model = models[name][0]
    clip = FakeClip(models[name][1], attention_mask=name == "lumina2", padded=False)
    prompts = ["a red circle", "a big blue star on green grass"]
    temp_before = folder_paths.get_temp_directory()
    folder_paths.set_temp_directory(str(output_dir / "temp_lengths"))
    try:
        with torch.inference_mode():
            file, _curve, report = node_out(AGDTrainNode.execute(
                model, clip, "\n".join(prompts), 2.0, 6.0, 3, 2, 4, 1e-2, 8, 64, 0, f"agd/{name}_lengths"))
    finally:
        folder_paths.set_temp_directory(temp_before)
    store = TrajectoryStore.open(next((output_dir / "temp_lengths" / "guidance_lab_agd").glob("data_*")))
    assert store.meta["text_lengths"] == [5, 9]
    assert not store.prompts[0, 5:].any() and store.prompts[1].shape[0] == 9
    # the teacher: trajectory 0 (the short prompt) is CFG on its own unpadded embedding
    row = store.row(0, 0)
    x, sigma, _c, scale, target = store.batch(np.array([row]), "cpu")
    encoded = [clip.encode_from_tokens(text, return_dict=True) for text in (prompts[0], "")]
    (embedding, options), (empty, empty_options) = [
        (e["cond"], {k: v for k, v in e.items() if k != "cond" and v is not None}) for e in encoded]
    sigmas = torch.tensor([float(sigma), 0.0])
    records = cfg_trajectories(model, embedding, empty, scale, x / float(sigma), sigmas, "euler", 0, options,
                               empty_options)
    assert torch.allclose(records[0][2], target, atol=2e-2)
    # the student: a padded batch equals each prompt's own call
    made = adapter_file.load(output_dir / file)
    agd = AGDAdapters(made.adapters, (2.0, 6.0), "", architecture=made.architecture["architecture"],
                      model_sampling=model.get_model_object("model_sampling"))
    rows = np.array([store.row(0, 1), store.row(1, 1)])
    x, sigma, context, scale, _target = store.batch(rows, "cpu")
    extras = store.batch_extras(rows, "cpu")
    assert extras[TEXT_TOKENS] == (5, 9)
    with torch.no_grad():
        together = adapted_call(model, agd, x, sigma, context, scale, extras)
        for i, length in enumerate((5, 9)):
            own = {k: (v[i:i + 1, :length] if k == "attention_mask" else (v[i],) if isinstance(v, tuple) else
                       v[i:i + 1]) for k, v in extras.items() if k != TEXT_TOKENS}
            own = {k: (v[0] if isinstance(v, tuple) else v) for k, v in own.items()}
            alone = adapted_call(model, agd, x[i:i + 1], sigma[i:i + 1], context[i:i + 1, :length], scale[i:i + 1], own)
            assert torch.allclose(together[i:i + 1], alone, atol=1e-5)


# The transformer blocks ComfyUI's patches_replace["dit"] reaches, per family.
BLOCK_LISTS = {"sd3": ("joint_blocks",), "flux": ("double_blocks", "single_blocks"), "wan": ("blocks",)}


@pytest.mark.parametrize("name", ("sd3", "flux", "wan"))
def test_training_recomputes_each_block_not_the_last_one(host, name, monkeypatch):
    """In training the blocks are recomputed in backward (activation checkpointing). Each
    recomputation must run the block it stands for (ComfyUI's block wrapper is a closure over
    its forward loop's variable, which names the last block by then) and see the values the
    block saw, though ComfyUI's blocks write in place to tensors autograd saved: the adapters'
    gradients are those of a backward through copies of the saved activations, and the slope of
    the loss along a direction of one early adapter's weights is the finite difference's."""
    import guidance_lab.nodes.bridge.agd as bridge
    from guidance_lab.nodes.bridge.agd import AGDAdapters, adapted_call
    from guidance_lab.nodes.bridge.agd_training import training_copy
    from guidance_lab.nodes.bridge.compat import training_mode

    model, positive, _negative = tiny_model(name, blocks=3)
    model = training_copy(model)
    model.model.requires_grad_(False)  # frozen, as the trainer holds it
    adapters = adapters_for(model, trained=True)
    agd = AGDAdapters(adapters, (1.0, 8.0), "", architecture={"sd3": "mmdit"}.get(name, name),
                      model_sampling=model.get_model_object("model_sampling"))
    g = torch.Generator().manual_seed(5)
    x = torch.randn((2, *FAMILIES[name]), generator=g)
    sigma, scale = torch.tensor([0.8, 0.4]), torch.tensor([3.0, 6.0])
    context = positive[0][0].repeat(2, 1, 1)
    pooled = positive[0][1].get("pooled_output")
    extras = {} if pooled is None else {"y": pooled.repeat(2, 1)}
    network = model.model.diffusion_model
    blocks = [block for attr in BLOCK_LISTS[name] for block in getattr(network, attr)]
    runs = {id(block): 0 for block in blocks}
    hooks = [block.register_forward_pre_hook(lambda module, _args: runs.__setitem__(id(module), runs[id(module)] + 1))
             for block in blocks]

    def loss():
        return adapted_call(model, agd, x, sigma, context, scale, extras).double().square().mean()

    def gradients():
        adapters.zero_grad(set_to_none=True)
        with training_mode():  # as the trainer's loop (0.33's Flux RoPE has a backward only then)
            loss().backward()
        return {n: p.grad.clone() for n, p in adapters.named_parameters() if p.grad is not None}

    try:
        recomputed = gradients()
        # Once forward, once more in backward, but the first: its input needs no gradient (no
        # adapter before it), so it is not recomputed.
        assert [runs[id(b)] for b in blocks] == [1] + [2] * (len(blocks) - 1)
        monkeypatch.setattr(bridge, "checkpoint", lambda fn, *tensors, **_kw: fn(*tensors))
        with torch.autograd.graph.saved_tensors_hooks(torch.clone, lambda t: t):
            kept = gradients()
    finally:
        for hook in hooks:
            hook.remove()
    assert recomputed.keys() == kept.keys() and len(kept) == len(list(adapters.parameters()))
    for key in kept:
        torch.testing.assert_close(recomputed[key], kept[key], atol=1e-7, rtol=1e-5)
    first = [(n, p) for n, p in adapters.named_parameters() if n.split(".")[1] == adapter_names(adapters)[0]]
    direction = {n: torch.randn(p.shape, generator=g) for n, p in first}
    slope = sum((recomputed[n].double() * direction[n]).sum() for n, _ in first).item()

    def moved(eps):
        with torch.no_grad():
            for n, p in first:
                p.add_(eps * direction[n])
            value = loss().item()
            for n, p in first:
                p.sub_(eps * direction[n])
        return value

    eps = 2e-3
    assert abs((moved(eps) - moved(-eps)) / (2 * eps) - slope) <= 5e-4 * abs(slope)


def adapter_names(adapters) -> list:
    """The adapters' block names in the order the network runs them."""
    return list(dict.fromkeys(n.split(".")[1] for n, _p in adapters.named_parameters()))
