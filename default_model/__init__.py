"""The pack's embedded default models: where their weights live and what they are called.

Plain Python (no ComfyUI, no torch): the loader node and the development tools both read
these names from here. The networks are built by ``nodes/bridge/default_model.py``.
"""

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# v1, eps prediction on SD's schedule (kept for comparison; superseded by the v2 pair).
SHAPES32_V1 = "guidance_lab_shapes32.safetensors"
DEFAULT_WEIGHTS = SHAPES32_V1

__all__ = ["WEIGHTS_DIR", "SHAPES32_V1", "DEFAULT_WEIGHTS"]
