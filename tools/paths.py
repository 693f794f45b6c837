"""Every path the development tools use, defined once (standard library only).

The provisioner runs this under the machine's python3 before the host exists; everything
else runs under the host's python (``.host/venv/bin/python -m tools.<module>``).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACK_NAME = "guidance_lab"  # the package name ComfyUI and the tools import the checkout as

# The per-checkout hosts made by tools/host/provision.py. A host is a folder holding
# ``ComfyUI/`` (the tree, with this checkout linked into custom_nodes) and ``venv`` (a link to
# its cached venv). The pinned host (host.lock) is ``.host`` itself; a host built from another
# ComfyUI tree (``provision --comfyui SRC``) is ``.host/comfyui-<version>``.
# GUIDANCE_LAB_HOST selects the host every tool and test uses (a path, relative to the
# repository or absolute); unset or empty means the pinned host. It is an environment
# variable, not an argument, so that the subprocesses the tests start (servers, torchrun,
# training tools) see the same host as the test that started them.
HOST_ENV = "GUIDANCE_LAB_HOST"
DOT_HOST = REPO / ".host"
PINNED_HOST = DOT_HOST


def _selected_host() -> Path:
    chosen = os.environ.get(HOST_ENV, "").strip()
    if not chosen:
        return PINNED_HOST
    path = Path(chosen).expanduser()
    return (path if path.is_absolute() else REPO / path).resolve()


HOST_ROOT = _selected_host()
HOST_DIR = HOST_ROOT / "ComfyUI"
VENV_LINK = HOST_ROOT / "venv"
HOST_PYTHON = VENV_LINK / "bin" / "python"
HOST_FILES = REPO / "tools" / "host"  # host.lock, requirements.txt, tree-requirements.txt

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
