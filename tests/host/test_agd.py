"""AGD in ComfyUI: adapters injected through attention patches on the pack's default model."""

import copy

import pytest
import torch

from guidance_lab.guiders.agd import AdapterConfig, AdapterSet, adapter_file
from guidance_lab.nodes.extension import NODES
from guidance_lab.nodes.agd import AGDAdapterLoaderNode, AGDGuiderNode
from guidance_lab.nodes.default_model import DefaultModelLoaderNode
from guidance_lab.nodes.validation import NodeInputError

from .comfy_graph import encode, node_out, sample

pytestmark = pytest.mark.host

VPRED32_FILE = "guidance_lab_vpred32.safetensors"  # the eps-family default model, pinned: the tests' numbers are its
SMALL = AdapterConfig(width=16, fourier_features=16, mlp_hidden=32, time_features=16, seed=0)


@pytest.fixture(scope="module")
def shapes(host):
    model, clip, _vae = node_out(DefaultModelLoaderNode.execute(VPRED32_FILE))
    return model, encode(clip, "a red circle on a white background"), encode(clip, "")


def adapters_for(model, trained: bool):
    from guidance_lab.nodes.bridge.agd import attn2_layout

    adapters = AdapterSet(attn2_layout(model), SMALL)
    if trained:  # stands in for training: every weight moved, the output projections too
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in adapters.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return adapters


def save_adapter(model, path, trained: bool, scale_range=(1.0, 8.0), fingerprint=None):
    from guidance_lab.nodes.bridge.agd import architecture_of, base_parameter_count
    from guidance_lab.nodes.bridge.fingerprint import base_model_fingerprint

    made = adapter_file.AdapterFile(adapters_for(model, trained), fingerprint or base_model_fingerprint(model),
                                    architecture_of(model), scale_range, {}, "test",
                                    base_parameter_count(model))
    return adapter_file.save(path, made)


def latent(batch=1):
    return {"samples": torch.zeros(batch, 3, 32, 32)}


def agd_sample(model, positive, scale, seed=5, steps=4, batch=1):
    guider = node_out(AGDGuiderNode.execute(model, positive, scale))[0]
    return guider, sample(guider, "euler", steps, latent(batch), seed=seed)


def cond_only_sample(model, positive, negative, seed=5, steps=4, batch=1):
    from comfy_extras import nodes_custom_sampler as cs

    guider = node_out(cs.CFGGuider.execute(model, positive, negative, 1.0))[0]  # cfg 1: D_c alone
    return sample(guider, "euler", steps, latent(batch), seed=seed)


def test_layout_names_every_cross_attention_the_model_runs(shapes):
    from guidance_lab.nodes.bridge.agd import attn2_layout

    model, positive, negative = shapes
    layout = attn2_layout(model)
    seen = []

    def record(n, context, value, extra):
        seen.append((f"{extra['block'][0]}_{extra['block'][1]}_{extra['block_index']}", n.shape[-1],
                     context.shape[-1]))
        return n, context, value

    probe = model.clone()
    probe.set_model_attn2_patch(record)
    cond_only_sample(probe, positive, negative, steps=1)
    assert {name: (h, c) for name, h, c in seen} == layout
    assert len(layout) == 4 and all(c == 64 for _h, c in layout.values())  # the v1 default model


def test_zero_initialised_adapters_leave_the_output_bit_for_bit_unchanged(shapes, output_dir):
    model, positive, negative = shapes
    save_adapter(model, output_dir / "agd" / "zero.safetensors", trained=False)
    patched = node_out(AGDAdapterLoaderNode.execute(model, "agd/zero.safetensors"))[0]
    for scale in (1.0, 7.5):
        _guider, out = agd_sample(patched, positive, scale, batch=2)
        assert torch.equal(out, cond_only_sample(model, positive, negative, batch=2))


def test_trained_adapters_change_the_output_with_the_scale_and_leave_the_base_alone(shapes, output_dir):
    model, positive, negative = shapes
    base = cond_only_sample(model, positive, negative)
    patches_before = dict(model.model_options.get("transformer_options", {}).get("patches", {}))
    save_adapter(model, output_dir / "agd" / "trained.safetensors", trained=True)
    patched, report = node_out(AGDAdapterLoaderNode.execute(model, "agd/trained.safetensors"))
    assert "trained for scales 1 to 8" in report and "% of the model" in report
    guider, at2 = agd_sample(patched, positive, 2.0)
    _, at6 = agd_sample(patched, positive, 6.0)
    assert (at2 - base).abs().max() > 1e-3 and (at2 - at6).abs().max() > 1e-3
    # one model evaluation per step, booked by the pack's NFE accounting
    assert guider.last_record.nfe_per_step == [1, 1, 1, 1]
    # the base MODEL is untouched; without a scale in the run (stock CFG) the adapters are off
    assert dict(model.model_options.get("transformer_options", {}).get("patches", {})) == patches_before
    assert torch.equal(cond_only_sample(model, positive, negative), base)
    assert torch.equal(cond_only_sample(patched, positive, negative), base)


def test_adapters_read_the_timestep_of_a_model_sampling_node_after_the_loader(shapes, output_dir):
    """ModelSamplingDiscrete after the loader changes which timestep a sigma is; the adapters get
    the one the network gets, not the one of the model they were loaded onto."""
    from comfy_extras import nodes_model_advanced as adv

    from guidance_lab.nodes.bridge.agd import find_adapters

    model, positive, _negative = shapes
    save_adapter(model, output_dir / "agd" / "resampled.safetensors", trained=True)
    patched = node_out(AGDAdapterLoaderNode.execute(model, "agd/resampled.safetensors"))[0]
    resampled = adv.ModelSamplingDiscrete().patch(patched, "v_prediction", False)[0]  # the file's is zsnr
    agd, seen = find_adapters(resampled), []
    original = agd.call_inputs

    def spy(run, sigma, count, device):
        out = original(run, sigma, count, device)
        seen.append((sigma.detach().clone(), out["timestep"]))
        return out

    agd.call_inputs = spy
    try:
        agd_sample(resampled, positive, 3.0)
    finally:
        del agd.call_inputs
    sampling, loaded = resampled.get_model_object("model_sampling"), patched.get_model_object("model_sampling")
    assert seen and any(not torch.equal(sampling.timestep(s), loaded.timestep(s)) for s, _ in seen)
    for sigma, timestep in seen:
        torch.testing.assert_close(timestep, sampling.timestep(sigma).float().expand_as(timestep))


def test_a_batch_sample_gets_what_it_gets_alone(shapes, output_dir):
    model, positive, _negative = shapes
    save_adapter(model, output_dir / "agd" / "trained.safetensors", trained=True)
    patched = node_out(AGDAdapterLoaderNode.execute(model, "agd/trained.safetensors"))[0]
    _, pair = agd_sample(patched, positive, 4.0, batch=2)
    _, alone = agd_sample(patched, positive, 4.0, batch=1)
    torch.testing.assert_close(pair[:1], alone, atol=1e-5, rtol=1e-5)


def test_adapter_of_another_base_model_is_refused_naming_both(shapes, output_dir):
    from guidance_lab.nodes.bridge.fingerprint import base_model_fingerprint

    model, _positive, _negative = shapes
    save_adapter(model, output_dir / "other.safetensors", trained=False, fingerprint="0123456789abcdef")
    with pytest.raises(NodeInputError, match=r"AGD Adapter Loader \(Guidance Lab\): input 'adapter_file'") as err:
        AGDAdapterLoaderNode.execute(model, "other.safetensors")
    assert "0123456789abcdef" in str(err.value) and base_model_fingerprint(model) in str(err.value)


def test_shipped_adapters_load_by_name_on_their_own_model_only(shapes):
    """The adapters the pack ships for its default models: found by name (after ComfyUI's
    output and input folders), applied to their model, refused on the other one."""
    from comfy_extras import nodes_custom_sampler as cs
    from guidance_lab.default_model import AGD_ADAPTERS, FLOW32, VPRED32
    from guidance_lab.nodes.bridge.fingerprint import base_model_fingerprint

    model, positive, negative = shapes
    patched, report = node_out(AGDAdapterLoaderNode.execute(model, AGD_ADAPTERS[VPRED32]))
    assert "(from the pack's shipped adapters)" in report and "trained for scales 1 to 8" in report
    # trained: one pass per step lands nearer CFG's image than the prompt alone (what the
    # adapters start from) does, on seeds they never saw
    _, agd = agd_sample(patched, positive, 5.0, seed=11, steps=10, batch=4)
    cfg = sample(node_out(cs.CFGGuider.execute(model, positive, negative, 5.0))[0], "euler", 10, latent(4), seed=11)
    alone = cond_only_sample(model, positive, negative, seed=11, steps=10, batch=4)
    rmse = lambda a, b: float((a - b).square().mean().sqrt())  # noqa: E731
    assert rmse(agd, cfg) < rmse(alone, cfg)
    with pytest.raises(NodeInputError, match=r"AGD Adapter Loader \(Guidance Lab\): input 'adapter_file'") as err:
        AGDAdapterLoaderNode.execute(model, AGD_ADAPTERS[FLOW32])
    assert base_model_fingerprint(model) in str(err.value)


def test_shipped_dit_adapters_bring_one_pass_nearer_cfg(host):
    """The DiT default model's shipped adapters (block attention, through block replacement on
    ComfyUI's Flux network): found by name, nearer CFG's images than the prompt alone on unseen
    seeds, and refused on the flow UNet."""
    from comfy_extras import nodes_custom_sampler as cs
    from guidance_lab.default_model import AGD_ADAPTERS, DIT32, FLOW32

    model, clip, _vae = node_out(DefaultModelLoaderNode.execute(DIT32))
    positive, negative = encode(clip, "a blue square on a black background"), encode(clip, "")
    patched, report = node_out(AGDAdapterLoaderNode.execute(model, AGD_ADAPTERS[DIT32]))
    assert "(from the pack's shipped adapters)" in report
    _, agd = agd_sample(patched, positive, 5.0, seed=11, steps=10, batch=4)
    cfg = sample(node_out(cs.CFGGuider.execute(model, positive, negative, 5.0))[0], "euler", 10, latent(4), seed=11)
    alone = cond_only_sample(model, positive, negative, seed=11, steps=10, batch=4)
    rmse = lambda a, b: float((a - b).square().mean().sqrt())  # noqa: E731
    assert rmse(agd, cfg) < rmse(alone, cfg)
    flow_unet = node_out(DefaultModelLoaderNode.execute(FLOW32))[0]
    with pytest.raises(NodeInputError, match=r"AGD Adapter Loader \(Guidance Lab\): input 'adapter_file'"):
        AGDAdapterLoaderNode.execute(flow_unet, AGD_ADAPTERS[DIT32])


def test_corrupt_or_missing_file_and_double_loading_are_refused(shapes, output_dir):
    model, _positive, _negative = shapes
    path = save_adapter(model, output_dir / "a.safetensors", trained=False)
    data = path.read_bytes()
    (output_dir / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(NodeInputError, match="truncated or corrupted"):
        AGDAdapterLoaderNode.execute(model, "cut.safetensors")
    with pytest.raises(NodeInputError, match="no such file"):
        AGDAdapterLoaderNode.execute(model, "missing.safetensors")
    patched = node_out(AGDAdapterLoaderNode.execute(model, "a.safetensors"))[0]
    with pytest.raises(NodeInputError, match="already has AGD adapters"):
        AGDAdapterLoaderNode.execute(patched, "a.safetensors")


def test_guider_refuses_a_scale_outside_the_trained_range_and_a_model_without_adapters(shapes, output_dir):
    model, positive, _negative = shapes
    save_adapter(model, output_dir / "a.safetensors", trained=False, scale_range=(2.0, 6.0))
    patched = node_out(AGDAdapterLoaderNode.execute(model, "a.safetensors"))[0]
    with pytest.raises(NodeInputError, match=r"input 'scale' .*outside the range the adapter was trained on, \[2, 6\]"):
        AGDGuiderNode.execute(patched, positive, 7.0)
    with pytest.raises(NodeInputError, match="input 'model' has no AGD adapters"):
        AGDGuiderNode.execute(model, positive, 4.0)


def test_nodes_are_registered_with_tooltips():
    from guidance_lab.nodes.agd import AGDTrainNode

    for node, node_id in ((AGDAdapterLoaderNode, "GuidanceLab_AGDAdapterLoader"),
                          (AGDGuiderNode, "GuidanceLab_AGDGuider"), (AGDTrainNode, "GuidanceLab_AGDTrain")):
        assert node in NODES
        schema = node.define_schema()
        assert schema.node_id == node_id and all(i.tooltip for i in schema.inputs)
    assert [i.id for i in AGDGuiderNode.define_schema().inputs] == ["model", "positive", "scale"]


def test_training_node_trains_an_adapter_the_loader_and_guider_use(shapes, output_dir):
    import folder_paths

    from guidance_lab.nodes.agd import AGDTrainNode

    model, positive = shapes[0], shapes[1]
    clip = node_out(DefaultModelLoaderNode.execute(VPRED32_FILE))[1]
    temp_before = folder_paths.get_temp_directory()
    folder_paths.set_temp_directory(str(output_dir / "temp"))
    try:
        with torch.inference_mode():  # as ComfyUI's executor runs nodes
            name, curve, report = node_out(AGDTrainNode.execute(
                model, clip, "a red circle on a white background\na blue star on a black background", 2.0, 6.0,
                4, 6, 8, 1e-3, 8, 32, 0, "agd/trained"))
    finally:
        folder_paths.set_temp_directory(temp_before)
    assert name == "agd/trained.safetensors" and "2 prompts, 6 steps" in report
    assert curve.shape[0] == 1 and curve.shape[-1] == 3
    made = adapter_file.load(output_dir / name)
    assert made.scale_range == (2.0, 6.0) and made.training["training_steps"] == 6
    patched = node_out(AGDAdapterLoaderNode.execute(model, name))[0]
    guider, out = agd_sample(patched, positive, 4.0)
    assert torch.isfinite(out).all() and guider.last_record.total_nfe == 4
    with pytest.raises(NodeInputError, match="input 'scale_max' is 1.0, below scale_min 2.0"):
        AGDTrainNode.execute(model, clip, "a red circle", 2.0, 1.0, 4, 6, 8, 1e-3, 8, 32, 0, "agd/x")
    with pytest.raises(NodeInputError, match="input 'prompts' is empty"):
        AGDTrainNode.execute(model, clip, " \n ", 2.0, 6.0, 4, 6, 8, 1e-3, 8, 32, 0, "agd/x")
    with pytest.raises(NodeInputError, match="input 'clip' is int, not a CLIP"):
        AGDTrainNode.execute(model, 5, "a red circle", 2.0, 6.0, 4, 6, 8, 1e-3, 8, 32, 0, "agd/x")


def test_agd_composes_with_a_lora_on_the_same_base(shapes, output_dir):
    """A weight patch (LoRA-style diff) keeps the base fingerprint: the adapter loads, and its
    zero-initialised version leaves the patched model's output exactly as it was."""
    model, positive, negative = shapes
    save_adapter(model, output_dir / "zero.safetensors", trained=False)
    lora = model.clone()
    key = "diffusion_model.out.2.weight"
    weight = lora.model.state_dict()[key]
    lora.add_patches({key: (torch.full_like(weight, 0.01),)}, 1.0)
    patched = node_out(AGDAdapterLoaderNode.execute(lora, "zero.safetensors"))[0]
    _guider, out = agd_sample(patched, positive, 4.0)
    expected = cond_only_sample(lora, positive, negative)
    assert torch.equal(out, expected) and not torch.equal(expected, cond_only_sample(model, positive, negative))


def test_agd_runs_with_the_pack_samplers_and_the_stock_ksampler(shapes, output_dir):
    import nodes

    from guidance_lab.nodes.model_patch import GuidanceModelPatchNode
    from guidance_lab.nodes.sampling import SamplerSelectNode

    model, positive, negative = shapes
    save_adapter(model, output_dir / "trained.safetensors", trained=True)
    patched = node_out(AGDAdapterLoaderNode.execute(model, "trained.safetensors"))[0]
    guider = node_out(AGDGuiderNode.execute(patched, positive, 4.0))[0]
    pack_euler = node_out(SamplerSelectNode.execute("euler"))[0]
    ours = sample(guider, None, 4, latent(), seed=5, sampler=pack_euler)
    stock = sample(guider, "euler", 4, latent(), seed=5)
    torch.testing.assert_close(ours, stock, atol=1e-5, rtol=1e-5)
    assert guider.last_record.nfe_per_step == [1, 1, 1, 1]
    # Guidance Model Patch: the stock KSampler's cfg is the AGD scale, its negative is unused
    for_ksampler = node_out(GuidanceModelPatchNode.execute(patched, guider))[0]
    ks = nodes.KSampler().sample(for_ksampler, 5, 4, 4.0, "euler", "normal", positive, negative, latent())[0]
    torch.testing.assert_close(ks["samples"], stock, atol=1e-5, rtol=1e-5)
    with pytest.raises(Exception, match=r"outside the range the adapter was trained on"):
        nodes.KSampler().sample(for_ksampler, 5, 4, 9.0, "euler", "normal", positive, negative, latent())


def test_edict_inverts_exactly_with_agd_as_its_guidance(shapes, output_dir):
    """EDICT's guidance input takes the AGD Guider: its policy (cond only, the scale in the run's
    options) drives both directions, so the round trip is exact, and the adapters are active."""
    from comfy_extras import nodes_custom_sampler as cs

    from guidance_lab.nodes.edict import EdictInvertNode, EdictSampleNode

    model, positive, negative = shapes
    save_adapter(model, output_dir / "trained.safetensors", trained=True)
    patched = node_out(AGDAdapterLoaderNode.execute(model, "trained.safetensors"))[0]
    agd = node_out(AGDGuiderNode.execute(patched, positive, 4.0))[0]
    sigmas = node_out(cs.BasicScheduler.execute(patched, "normal", 5, 1.0))[0]
    source = {"samples": torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1}
    edict = node_out(EdictInvertNode.execute(patched, positive, negative, 3.0, sigmas, 0.93, source, "float64",
                                             agd))[0]
    assert edict.guidance.startswith("agd")
    back = node_out(EdictSampleNode.execute(patched, positive, negative, 3.0, sigmas, 0.93, edict, agd))[0]
    assert (back["samples"] - source["samples"]).abs().max() < 1e-5
    plain = node_out(EdictInvertNode.execute(patched, positive, negative, 1.0, sigmas, 0.93, source, "float64"))[0]
    assert (plain.x - edict.x).abs().max() > 1e-3  # cond-only CFG at 1 vs AGD at 4: the adapters ran


def test_file_reading_nodes_fingerprint_the_file_so_a_rewritten_one_is_read_again(shapes, output_dir):
    """ComfyUI caches a node's output by its inputs; a file trained again under the same name
    must not be served from that cache (``fingerprint_inputs``: the file's inode, size, mtime)."""
    from comfy_api.internal import first_real_override  # what ComfyUI checks before calling it

    from guidance_lab.nodes.default_model import DefaultModelLoaderNode
    from guidance_lab.nodes.linear_ag import LinearAGGuiderNode
    from guidance_lab.nodes.smooth_lora import SmoothLoraLoaderNode

    model = shapes[0]
    save_adapter(model, output_dir / "stamped.safetensors", trained=False)
    first = AGDAdapterLoaderNode.fingerprint_inputs(adapter_file="stamped.safetensors")
    assert first and AGDAdapterLoaderNode.fingerprint_inputs(adapter_file="stamped.safetensors") == first
    save_adapter(model, output_dir / "stamped.safetensors", trained=True)
    assert AGDAdapterLoaderNode.fingerprint_inputs(adapter_file="stamped.safetensors") not in ("", first)
    assert AGDAdapterLoaderNode.fingerprint_inputs(adapter_file="missing.safetensors") == ""
    assert DefaultModelLoaderNode.fingerprint_inputs(weights=VPRED32_FILE)
    for node in (AGDAdapterLoaderNode, DefaultModelLoaderNode, LinearAGGuiderNode, SmoothLoraLoaderNode):
        assert first_real_override(node, "fingerprint_inputs") is not None, node


def test_training_refuses_a_model_it_cannot_train_before_sampling_anything(shapes, output_dir):
    from guidance_lab.nodes.agd import AGDTrainNode, trainable_problem

    model = shapes[0]
    assert trainable_problem(model) == ""
    lora = model.clone()
    key = next(k for k in lora.model_state_dict() if k.startswith("diffusion_model.") and k.endswith(".weight"))
    lora.add_patches({key: (torch.full_like(lora.model_state_dict()[key], 0.01),)}, 1.0)
    with pytest.raises(NodeInputError, match=r"AGD Train.*input 'model' carries weight patches"):
        clip = node_out(DefaultModelLoaderNode.execute(VPRED32_FILE))[1]
        AGDTrainNode.execute(lora, clip, "a red circle", 1.0, 8.0, 4, 2, 2, 1e-3, 8, 32, 0, "never_written")
    assert not list(output_dir.glob("never_written*"))
    pooled = model.clone()
    pooled.model = copy.copy(model.model)  # the fixture's model object stays as it is
    pooled.model.adm_channels = 2816  # SDXL's pooled text embedding and size conditioning: trained (issue 31)
    assert trainable_problem(pooled) == ""
    attention = model.clone()
    attention.set_model_attn1_patch(lambda q, k, v, extra_options: (q, k, v))
    assert "patches other nodes added (patches)" in trainable_problem(attention)
    sampling = model.clone()
    sampling.add_object_patch("model_sampling", model.get_model_object("model_sampling"))
    assert "model_sampling" in trainable_problem(sampling)
    # The pack's own Guidance Model Patch (an OUTER_SAMPLE wrapper): the teacher would not be CFG.
    from guidance_lab.guiders.adaptive import AdaptivePolicy
    from guidance_lab.guiders import CFGPolicy
    from guidance_lab.nodes.bridge.policy_guider import PolicyGuider
    from guidance_lab.nodes.model_patch import GuidanceModelPatchNode

    ag = PolicyGuider(model, AdaptivePolicy(threshold=0.0, inner=CFGPolicy(5.0)))
    wrapped = node_out(GuidanceModelPatchNode.execute(model, ag))[0]
    assert "wrapper guidance_lab_policy_patch" in trainable_problem(wrapped)


def test_prompts_longer_than_one_chunk_are_refused_naming_the_line(shapes):
    from guidance_lab.nodes.bridge.agd_training import encode_prompts

    clip = node_out(DefaultModelLoaderNode.execute(VPRED32_FILE))[1]
    long = " ".join(["a red circle on a white background"] * 20)
    with pytest.raises(ValueError, match=r"prompt 2 .* more than one chunk"):
        encode_prompts(clip, ["a red circle on a white background", long])


def test_adaptive_guidance_refuses_the_agd_guider(shapes, output_dir):
    from guidance_lab.nodes.adaptive import AdaptiveGuiderNode

    model, positive, _negative = shapes
    save_adapter(model, output_dir / "trained.safetensors", trained=True)
    patched = node_out(AGDAdapterLoaderNode.execute(model, "trained.safetensors"))[0]
    agd = node_out(AGDGuiderNode.execute(patched, positive, 4.0))[0]
    with pytest.raises(NodeInputError, match=r"Adaptive Guidance.*input 'guider' runs agd"):
        AdaptiveGuiderNode.execute(agd, 0.99)


def test_the_agd_policy_is_refused_on_a_model_without_its_adapters(shapes, output_dir):
    """Guidance Model Patch and EDICT's guidance input take the guider's policy to another MODEL
    input: without adapters AGD would sample with no guidance at all, so it is refused there."""
    from comfy_extras import nodes_custom_sampler as cs

    from guidance_lab.nodes.edict import EdictInvertNode
    from guidance_lab.nodes.model_patch import GuidanceModelPatchNode
    from guidance_lab.nodes.validation import NodeInputError

    model, positive, negative = shapes
    save_adapter(model, output_dir / "trained.safetensors", trained=True)
    save_adapter(model, output_dir / "narrow.safetensors", trained=True, scale_range=(2.0, 5.0))
    patched = node_out(AGDAdapterLoaderNode.execute(model, "trained.safetensors"))[0]
    narrow = node_out(AGDAdapterLoaderNode.execute(model, "narrow.safetensors"))[0]
    agd = node_out(AGDGuiderNode.execute(patched, positive, 4.0))[0]
    with pytest.raises(NodeInputError, match=r"Guidance Model Patch.*input 'guider'.*AGD Adapter Loader"):
        GuidanceModelPatchNode.execute(model, agd)
    with pytest.raises(NodeInputError, match=r"input 'guider'.*trained for scales \[1.0, 8.0\]"):
        GuidanceModelPatchNode.execute(narrow, agd)
    sigmas = node_out(cs.BasicScheduler.execute(model, "normal", 3, 1.0))[0]
    with pytest.raises(NodeInputError, match=r"EDICT Invert.*input 'guidance'.*AGD adapters"):
        EdictInvertNode.execute(model, positive, negative, 3.0, sigmas, 0.93, latent(), "float64", agd)
    node_out(GuidanceModelPatchNode.execute(patched, agd))  # its own adapters: accepted


@pytest.mark.parametrize("family", ["eps", "flow"])
def test_sd15_layout_in_both_families_zero_adapters_change_nothing(fixture_model, family):
    """The SD1.x UNet layout (the tiny fixture checkpoint), as loaded (eps) and patched to flow
    sampling: every attn2 gets an adapter, zero-initialised ones leave the output bit for bit."""
    from comfy_extras import nodes_custom_sampler as cs

    from guidance_lab.guiders.agd import AGDPolicy
    from guidance_lab.nodes.bridge.agd import AGDGuider, apply_adapters, attn2_layout
    from guidance_lab.nodes.bridge.fingerprint import base_model_fingerprint

    from .comfy_graph import empty_latent, with_family

    model, positive, negative = fixture_model
    model = with_family(model, family)
    layout = attn2_layout(model)
    assert {name.split("_")[0] for name in layout} == {"input", "middle", "output"}
    assert all(context == 768 for _hidden, context in layout.values())  # CLIP-L width
    adapters = AdapterSet(layout, SMALL)
    patched = apply_adapters(model, adapters, (1.0, 8.0), base_model_fingerprint(model))

    guider = AGDGuider(patched, AGDPolicy(5.0, (1.0, 8.0)))
    guider.set_positive(positive)
    out = sample(guider, "euler", 3, empty_latent(1), seed=2)
    reference = node_out(cs.CFGGuider.execute(model, positive, negative, 1.0))[0]
    assert torch.equal(out, sample(reference, "euler", 3, empty_latent(1), seed=2))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in adapters.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    assert (sample(guider, "euler", 3, empty_latent(1), seed=2) - out).abs().max() > 1e-4
