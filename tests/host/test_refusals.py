"""Refusals that must say what is really wrong (issue 29, item 4): AGD and the Smooth-LoRA
loader on transformer models built through ComfyUI's own classes, and JSON booleans for
number inputs (the server-side check is tests/e2e/test_hardening.py)."""

import pytest
import torch

from guidance_lab.nodes.validation import NodeInputError

from .families import tiny_model

pytestmark = pytest.mark.host


@pytest.mark.parametrize("name", ["wan", "flux", "sd3", "lumina2"])
def test_agd_training_on_a_transformer_model_says_what_it_lacks(name):
    """Wan, Flux and SD3 take offset adapters through their block-replacement hook (issue 31),
    Lumina 2 through the post-block patch where the host's NextDiT calls it (0.33); where it
    calls none (0.3.75) the refusal names the hooks, never "no cross-attention"."""
    from guidance_lab.nodes.agd import trainable_problem
    from guidance_lab.nodes.bridge.agd import calls_post_block_patch

    model, _, _ = tiny_model(name)
    problem = trainable_problem(model)
    if name != "lumina2" or calls_post_block_patch(type(model.model.diffusion_model)):
        assert problem == "", problem
        return
    assert "patches_replace 'dit'" in problem and "Lumina 2" in problem, problem
    assert "no cross-attention blocks" not in problem


def test_smooth_lora_loader_on_wan_blames_the_layout_not_the_lora(loras):
    """A rank-4 LoRA for Wan's own attention projections (diffusers' names for them, in the
    attention-processor layout, shapes of this model) is not "for another architecture"."""
    from safetensors.torch import save_file

    from guidance_lab.nodes.smooth_lora import SmoothLoraLoaderNode

    model, _, _ = tiny_model("wan")
    dim = model.model.diffusion_model.blocks[0].self_attn.q.weight.shape[0]
    g = torch.Generator().manual_seed(0)
    tensors = {f"blocks.0.{attn}.processor.{proj}_lora.{half}.weight":
               torch.randn((4, dim) if half == "down" else (dim, 4), generator=g)
               for attn in ("attn1", "attn2") for proj in ("to_q", "to_k", "to_v", "to_out")
               for half in ("up", "down")}
    save_file(tensors, str(loras / "wan_attention.safetensors"))
    with pytest.raises(NodeInputError, match=r"Smooth-LoRA Loader \(Guidance Lab\): input 'model' is a WAN21 "
                                             r"model, on which ComfyUI places no LoRA of the attention-processor "
                                             r"layout") as raised:
        SmoothLoraLoaderNode.execute(model, "wan_attention.safetensors", 1.0)
    assert "another architecture" not in str(raised.value)


def test_json_booleans_for_number_inputs_become_refusals():
    from guidance_lab.nodes.extension import NODES
    from guidance_lab.nodes.bridge.prompt_checks import number_inputs, refuse_booleans

    table = number_inputs(NODES)
    assert table["GuidanceLab_CFGGuider"]["cfg"] == "FLOAT" and table["GuidanceLab_LinearAGCalibrate"]["runs"] == "INT"
    prompt = {"1": {"class_type": "GuidanceLab_CFGGuider", "inputs": {"cfg": True}},
              "2": {"class_type": "GuidanceLab_LinearAGCalibrate", "inputs": {"runs": {"__value__": False},
                                                                             "cfg": 5.0, "overwrite": True}},
              "3": {"class_type": "KSampler", "inputs": {"cfg": True}}}
    refuse_booleans({"prompt": prompt}, table)
    assert prompt["1"]["inputs"]["cfg"] == "true (a JSON boolean; give a number)"
    assert prompt["2"]["inputs"] == {"runs": "false (a JSON boolean; give an integer)", "cfg": 5.0, "overwrite": True}
    assert prompt["3"]["inputs"]["cfg"] is True  # not the pack's node
    for text in (prompt["1"]["inputs"]["cfg"], prompt["2"]["inputs"]["runs"]):
        with pytest.raises(ValueError):
            float(text)  # what ComfyUI's validation does with it: "Failed to convert" naming the input
    assert refuse_booleans("not a prompt", table) == "not a prompt"
