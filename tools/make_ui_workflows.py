"""Write workflows/<name>.json (UI format, for the canvas and the template browser) from
each workflows/api/<name>.json, using a running host's /object_info.

Run with the host's python after `make provision`:  .host/venv/bin/python -m tools.make_ui_workflows
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from tools.bootstrap import import_pack
from tools.paths import REPO


def main() -> int:
    import_pack()
    from tools.host.api_graph import api_workflows, load
    from tools.host.comfy_server import ComfyServer
    from tools.host.ui_graph import api_to_ui

    with tempfile.TemporaryDirectory() as tmp, ComfyServer(Path(tmp)) as server:
        info = server.get_json("/object_info")
    for path in api_workflows():
        target = REPO / "workflows" / path.name
        target.write_text(json.dumps(api_to_ui(load(path), info), indent=1) + "\n")
        print(f"wrote {target.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
