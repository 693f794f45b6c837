"""Import this checkout as the package ``guidance_lab``, the way ComfyUI imports it.

Stand-alone scripts and the tests put ``host/`` on sys.path and call ``import_pack()``;
the checkout's folder name does not matter."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def import_pack(name: str = "guidance_lab"):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
