"""The pack's embedded default models: where their weights live and what they are called.

Plain Python (no ComfyUI, no torch): the loader node and the development tools both read
these names from here. The networks are built by ``nodes/bridge/default_model.py``.
"""

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# Companion files trained on the default models: Smooth-LoRAs (listed with ComfyUI's loras).
LORAS_DIR = WEIGHTS_DIR / "loras"
# AGD adapters trained on the default models (the AGD Adapter Loader finds them by name).
AGD_DIR = WEIGHTS_DIR / "agd"
# Rectified flow on ComfyUI's CONST sampling (shift 1): the family of SD3, Flux and most video models.
FLOW32 = "guidance_lab_flow32.safetensors"
# v-prediction on SD's schedule rescaled to zero terminal SNR: the eps family (SD1.x, SD2.x, SDXL).
VPRED32 = "guidance_lab_vpred32.safetensors"
# Rectified flow on ComfyUI's Flux DiT (joint attention to the text at every block): the
# instrument for the DiT families. Still in training (default_model/README.md): shipped so that
# every method can be measured on a DiT, with its adherence short of the other two's.
DIT32 = "guidance_lab_dit32.safetensors"
SHIPPED = (FLOW32, VPRED32, DIT32)
AGD_ADAPTERS = {FLOW32: "guidance_lab_flow32_agd.safetensors", VPRED32: "guidance_lab_vpred32_agd.safetensors",
                DIT32: "guidance_lab_dit32_agd.safetensors"}
# The one the pack presents first (demo, loader default, benchmark default).
DEFAULT_WEIGHTS = FLOW32

__all__ = ["WEIGHTS_DIR", "LORAS_DIR", "AGD_DIR", "FLOW32", "VPRED32", "DIT32", "SHIPPED", "AGD_ADAPTERS",
           "DEFAULT_WEIGHTS"]
