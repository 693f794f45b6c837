"""Every path the development tools use, defined once (standard library only).

The provisioner runs this under the machine's python3 before the host exists; everything
else runs under the host's python (``.host/venv/bin/python -m tools.<module>``).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACK_NAME = "guidance_lab"  # the package name ComfyUI and the tools import the checkout as

# The per-checkout host made by tools/host/provision.py.
DOT_HOST = REPO / ".host"
HOST_DIR = DOT_HOST / "ComfyUI"
VENV_LINK = DOT_HOST / "venv"
HOST_PYTHON = VENV_LINK / "bin" / "python"
HOST_FILES = REPO / "tools" / "host"  # host.lock, requirements.txt

# Caches shared by every checkout on the machine.
CACHE = Path(os.environ.get("GUIDANCE_LAB_CACHE") or Path.home() / ".cache" / "guidance-lab")
FIXTURE_CACHE = CACHE / "fixtures"
TRAINING_CACHE = CACHE / "training"

WORKFLOWS = REPO / "workflows"
API_WORKFLOWS = WORKFLOWS / "api"
DOCS = REPO / "docs"
BENCHMARK_RESULTS = DOCS / "benchmark"
README = REPO / "README.md"


def run_workdir(kind: str) -> Path:
    """A scratch folder for one run of a server-based tool: the process id keeps runs started
    in the same second apart."""
    import time

    return Path("/tmp") / f"guidance-lab-{kind}-{int(time.time())}-{os.getpid()}"
