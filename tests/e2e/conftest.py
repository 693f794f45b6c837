"""End-to-end tests: one real ComfyUI server per session, with the pack linked in."""

import pytest

from tools.host.comfy_server import ComfyServer


@pytest.fixture(scope="session")
def server(tmp_path_factory, sd15_checkpoint):
    workdir = tmp_path_factory.mktemp("comfy-server")
    with ComfyServer(workdir, extra_model_paths={"checkpoints": str(sd15_checkpoint.parent)}) as srv:
        yield srv
