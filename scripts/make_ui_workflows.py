"""Write workflows/<name>.json (UI format, for the canvas and the template browser) from
each workflows/api/<name>.json, using a running host's /object_info.

Run with the host's python after `make provision`:  .host/venv/bin/python scripts/make_ui_workflows.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    sys.path.insert(0, str(REPO / "host"))
    from pack_import import import_pack

    import_pack()
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
