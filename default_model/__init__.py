"""The pack's embedded default models: where their weights live and what they are called.

Plain Python (no ComfyUI, no torch): the loader node and the development tools both read
these names from here. The networks are built by ``nodes/bridge/default_model.py``.
"""

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# Companion files trained on the default models: Smooth-LoRAs (listed with ComfyUI's loras).
LORAS_DIR = WEIGHTS_DIR / "loras"
# Rectified flow on ComfyUI's CONST sampling (shift 1): the family of SD3, Flux and most video models.
FLOW32 = "guidance_lab_flow32.safetensors"
# v-prediction on SD's schedule rescaled to zero terminal SNR: the eps family (SD1.x, SD2.x, SDXL).
VPRED32 = "guidance_lab_vpred32.safetensors"
SHIPPED = (FLOW32, VPRED32)
# The one the pack presents first (demo, loader default, benchmark default).
DEFAULT_WEIGHTS = FLOW32

__all__ = ["WEIGHTS_DIR", "LORAS_DIR", "FLOW32", "VPRED32", "SHIPPED", "DEFAULT_WEIGHTS"]
