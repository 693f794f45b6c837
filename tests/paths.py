"""Where the tests find the provisioned host and the fixture cache."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOST_DIR = REPO / ".host" / "ComfyUI"
HOST_PYTHON = REPO / ".host" / "venv" / "bin" / "python"
CACHE = Path(os.environ.get("GUIDANCE_LAB_CACHE", Path.home() / ".cache" / "guidance-lab"))
FIXTURE_CACHE = CACHE / "fixtures"


def ensure_host_importable() -> Path:
    """Put the provisioned ComfyUI on sys.path (CPU mode) without importing its models."""
    if not (HOST_DIR / "main.py").exists():
        raise RuntimeError(f"no ComfyUI host at {HOST_DIR}: run `python3 host/provision.py` (make test does)")
    if str(HOST_DIR) not in sys.path:
        sys.path.insert(0, str(HOST_DIR))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    return HOST_DIR
