"""The Smooth-LoRA loader on the SD1.5-family fixture, with a file in exactly the released
layout (diffusers attention-processor keys, no alpha)."""

import pytest
import torch

pytestmark = pytest.mark.host

PROJECTIONS = ("to_q", "to_k", "to_v", "to_out")
RANK = 8


def released_layout(model, extra_layer: bool = False) -> dict:
    """A Smooth-LoRA state dict for the model, keyed as the released SD1.5 file is."""
    import comfy.utils

    gen = torch.Generator().manual_seed(0)
    diffusers = comfy.utils.unet_to_diffusers(model.model.model_config.unet_config)
    weights = model.model.state_dict()
    tensors = {}
    for key, unet_key in sorted(diffusers.items()):
        if not any(f".{attn}.{p}" in key for attn in ("attn1", "attn2") for p in PROJECTIONS):
            continue
        if not key.endswith(".weight"):
            continue
        layer = key[: -len(".weight")].replace(".to_out.0", ".to_out")
        block, proj = layer.rsplit(".", 1)
        out_dim, in_dim = weights[f"diffusion_model.{unet_key}"].shape
        tensors[f"{block}.processor.{proj}_lora.down.weight"] = torch.randn(RANK, in_dim, generator=gen) * 0.1
        tensors[f"{block}.processor.{proj}_lora.up.weight"] = torch.randn(out_dim, RANK, generator=gen) * 0.1
    if extra_layer:  # a block this shallow model does not have
        name = "up_blocks.3.attentions.2.transformer_blocks.0.attn1.processor.to_q_lora"
        tensors[f"{name}.down.weight"] = torch.randn(RANK, 8, generator=gen)
        tensors[f"{name}.up.weight"] = torch.randn(8, RANK, generator=gen)
    return tensors


def save(folder, name, tensors):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / name))
    return name


def patched_weights(model):
    """The model's weights with its patches applied (as sampling would see them). Another clone
    of the same model may still be loaded by an earlier test's sampling, with its own weight
    patches applied to the shared weights: unload it first."""
    import comfy.model_management

    comfy.model_management.unload_all_models()
    model.patch_model()
    try:
        return {k: v.detach().clone() for k, v in model.model.state_dict().items()}
    finally:
        model.unpatch_model()


def test_every_released_layout_key_is_applied_as_w_plus_up_down(fixture_model, loras):
    from guidance_lab.nodes.smooth_lora import SmoothLoraLoaderNode

    base = fixture_model[0]
    tensors = released_layout(base)
    layers = len(tensors) // 2
    assert layers >= 8 and all(".processor." in k for k in tensors)
    name = save(loras, "smooth.safetensors", tensors)
    patched, report = SmoothLoraLoaderNode.execute(base, name, 1.0).args
    assert f"applied {layers} of {layers}" in report and "rank 8" in report
    before, after = patched_weights(base), patched_weights(patched)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == layers
    import comfy.lora

    key_map = comfy.lora.model_lora_keys_unet(base.model, {})
    for down_key in [k for k in tensors if k.endswith(".down.weight")]:
        layer = down_key[: -len("_lora.down.weight")]
        target = key_map[layer]
        up = tensors[down_key.replace(".down.", ".up.")]
        expected = before[target] + (up @ tensors[down_key]).to(before[target].dtype)
        torch.testing.assert_close(after[target], expected, rtol=1e-5, atol=1e-6)


def test_strength_zero_changes_nothing(fixture_model, loras):
    from guidance_lab.nodes.smooth_lora import SmoothLoraLoaderNode

    base = fixture_model[0]
    name = save(loras, "smooth.safetensors", released_layout(base))
    patched = SmoothLoraLoaderNode.execute(base, name, 0.0).args[0]
    before, after = patched_weights(base), patched_weights(patched)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_layers_the_model_lacks_are_reported_not_silently_dropped(fixture_model, loras):
    from guidance_lab.nodes.smooth_lora import SmoothLoraLoaderNode

    base = fixture_model[0]
    tensors = released_layout(base, extra_layer=True)
    name = save(loras, "extra.safetensors", tensors)
    report = SmoothLoraLoaderNode.execute(base, name, 1.0).args[1]
    assert "not placed" in report and "up_blocks.3.attentions.2" in report


@pytest.mark.parametrize("case", ["not-a-lora", "other-architecture", "corrupt", "missing-half", "mixed"])
def test_bad_files_are_refused_naming_node_and_input(fixture_model, loras, case):
    from guidance_lab.nodes.smooth_lora import SmoothLoraLoaderNode
    from guidance_lab.nodes.validation import NodeInputError

    base = fixture_model[0]
    good = released_layout(base)
    if case == "not-a-lora":
        name = save(loras, "ckpt.safetensors", {"model.diffusion_model.out.2.weight": torch.zeros(4, 4)})
    elif case == "other-architecture":  # the right layout, the wrong widths
        name = save(loras, "other.safetensors", {k: torch.zeros(v.shape[0] + 1, v.shape[1]) if ".up." in k
                                                 else v for k, v in good.items()})
    elif case == "corrupt":
        (loras / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage}")
        name = "corrupt.safetensors"
    elif case == "missing-half":
        name = save(loras, "half.safetensors", {k: v for k, v in good.items() if ".up." not in k})
    else:
        name = save(loras, "mixed.safetensors", {**good, "lora_unet_foo.alpha": torch.tensor(8.0)})
    with pytest.raises(NodeInputError, match=r"Smooth-LoRA Loader \(Guidance Lab\): input 'lora_name'"):
        SmoothLoraLoaderNode.execute(base, name, 1.0)
