"""tools/training/bake_lora_strength.py: the file at strength 1 is the original at the baked strength."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tools.training.bake_lora_strength import bake


def read(path):
    with safe_open(str(path), framework="pt", device="cpu") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_only_up_is_scaled_and_the_strength_is_recorded(tmp_path):
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora"
    tensors = {f"{key}.down.weight": torch.randn(4, 8), f"{key}.up.weight": torch.randn(8, 4)}
    save_file(tensors, str(tmp_path / "a.safetensors"), metadata={"rank": "4", "history": "[]"})
    bake(tmp_path / "a.safetensors", tmp_path / "b.safetensors", 0.5)
    bake(tmp_path / "b.safetensors", tmp_path / "b.safetensors", 0.5)  # in place, on top of the first
    baked, meta = read(tmp_path / "b.safetensors")
    assert torch.equal(baked[f"{key}.down.weight"], tensors[f"{key}.down.weight"])
    assert torch.equal(baked[f"{key}.up.weight"], tensors[f"{key}.up.weight"] * 0.5 * 0.5)
    assert float(meta["strength_baked"]) == 0.25 and meta["rank"] == "4"
    assert [h["strength"] for h in json.loads(meta["history"])] == [0.5, 0.5]
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="positive"):
            bake(tmp_path / "a.safetensors", tmp_path / "c.safetensors", bad)
    assert not (tmp_path / "c.safetensors").exists()


def test_the_shipped_v_prediction_smooth_lora_carries_its_measured_strength():
    from guidance_lab.default_model import LORAS_DIR

    _tensors, meta = read(LORAS_DIR / "guidance_lab_vpred32_smooth.safetensors")
    assert float(meta["strength_baked"]) == 0.6
    _tensors, meta = read(LORAS_DIR / "guidance_lab_flow32_smooth.safetensors")
    assert "strength_baked" not in meta and meta["rank"] == "32" and meta["reg_weight"] == "5.0"
