"""Shared test set-up: the pack imported as the package ``guidance_lab``, as ComfyUI does.

Three layers (see the README): ``core/`` never imports the host; ``host/`` imports the
real ComfyUI provisioned under ``.host/`` in-process; ``e2e/`` starts it as a server.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The development tools (bootstrap, host, quality harness) are the package ``tools`` at the root.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from tools.bootstrap import ensure_host_importable, import_pack  # noqa: E402
from tools.paths import FIXTURE_CACHE, HOST_DIR  # noqa: E402

import_pack()


@pytest.fixture(scope="session")
def fixture_cache() -> Path:
    FIXTURE_CACHE.mkdir(parents=True, exist_ok=True)
    return FIXTURE_CACHE


@pytest.fixture(scope="session")
def sd15_checkpoint(fixture_cache) -> Path:
    """The tiny SD1.5-family checkpoint, built once and cached between runs."""
    ensure_host_importable()
    builder = importlib.import_module("guidance_lab.tests.fixtures.sd15_checkpoint")
    return builder.ensure_sd15_checkpoint(fixture_cache)


@pytest.fixture(scope="session")
def host():
    """The real ComfyUI, imported in-process (CPU)."""
    ensure_host_importable()
    import comfy.model_management  # noqa: F401  (after args.cpu is set)

    return HOST_DIR
