"""One bootstrap for every development script and the tests: the checkout imported as the
package ``guidance_lab`` (the way ComfyUI imports it from ``custom_nodes/``), and the
provisioned ComfyUI put on ``sys.path`` in CPU mode.

Scripts run from the repository root as modules (``.host/venv/bin/python -m tools.demo``),
so ``tools`` is importable and no script edits ``sys.path`` itself.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from .paths import HOST_DIR, PACK_NAME, REPO

# "gpu": the in-process tools (trainers, evaluate, smooth_istd) let ComfyUI put its models on a
# CUDA GPU when there is one. Only ``pack_with_host`` reads it: the tests, which call
# ``ensure_host_importable`` themselves, and the server-based tools (``--cpu``) stay on the CPU.
DEVICE_ENV = "GUIDANCE_LAB_DEVICE"


def import_pack(name: str = PACK_NAME):
    """The checkout as a package named ``name``; its folder name does not matter."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def ensure_host_importable(allow_gpu: bool = False):
    """Put the provisioned ComfyUI on sys.path without importing its models: in CPU mode, unless
    ``allow_gpu`` and GUIDANCE_LAB_DEVICE=gpu and a CUDA GPU is there."""
    if not (HOST_DIR / "main.py").exists():
        raise RuntimeError(f"no ComfyUI host at {HOST_DIR}: run `make provision` (make test does)")
    if str(HOST_DIR) not in sys.path:
        sys.path.insert(0, str(HOST_DIR))
    import comfy.cli_args

    comfy.cli_args.args.cpu = not (allow_gpu and _wants_gpu())
    return HOST_DIR


def _wants_gpu() -> bool:
    if os.environ.get(DEVICE_ENV, "cpu").lower() != "gpu":
        return False
    import torch

    if not torch.cuda.is_available():
        print(f"{DEVICE_ENV}=gpu but torch sees no CUDA GPU: running on the CPU", file=sys.stderr)
        return False
    return True


def pack_with_host():
    """The pack and the host, ready for in-process ComfyUI work (training, evaluation)."""
    pack = import_pack()
    ensure_host_importable(allow_gpu=True)
    import comfy.model_management  # noqa: F401  (after args.cpu)

    return pack
