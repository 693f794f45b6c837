"""Write workflows/<name>.json (UI format, for the canvas and the template browser) from
each workflows/api/<name>.json, using a running host's /object_info.

Run with the host's python after `make provision`:  .host/venv/bin/python scripts/make_ui_workflows.py
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    spec = importlib.util.spec_from_file_location(
        "guidance_lab", REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["guidance_lab"] = module
    spec.loader.exec_module(module)
    from guidance_lab.host.api_graph import api_workflows, load
    from guidance_lab.host.comfy_server import ComfyServer
    from guidance_lab.host.ui_graph import api_to_ui

    with tempfile.TemporaryDirectory() as tmp, ComfyServer(Path(tmp)) as server:
        info = server.get_json("/object_info")
    for path in api_workflows():
        target = REPO / "workflows" / path.name
        target.write_text(json.dumps(api_to_ui(load(path), info), indent=1) + "\n")
        print(f"wrote {target.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
