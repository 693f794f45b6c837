"""The static check (issue 28): every ComfyUI name the pack imports and every ComfyUI call it
makes, against every provisioned ComfyUI tree (the pinned 0.3.75 and, once provisioned,
0.33.0), so an update that breaks the pack is named here rather than by users."""

import pytest

from tools.host import import_check
from tools.paths import HOST_DIR

pytestmark = pytest.mark.host


def trees():
    found = import_check.provisioned_trees()
    return found if HOST_DIR in found else [*found, HOST_DIR]


@pytest.mark.parametrize("tree", trees(), ids=lambda t: t.parent.name if t.parent.name != ".host" else "pinned")
def test_every_comfyui_import_and_call_of_the_pack_binds(tree):
    report = import_check.check(tree)
    assert report["references"] > 300  # the scan saw the pack (nodes/, tools/, tests/)
    assert import_check.problems(report) == []


def test_the_check_names_a_removed_name_a_call_that_no_longer_binds_and_a_shim_outside_the_seam(tmp_path):
    """The same check on a small pack written to break against the selected host's tree."""
    (tmp_path / "nodes" / "bridge").mkdir(parents=True)
    (tmp_path / "broken.py").write_text(
        "import comfy.sample\n"
        "from comfy.samplers import no_such_function\n"
        "from comfy_extras.nodes_custom_sampler import NoSuchNode\n"
        "comfy.sample.fix_empty_latent_channels(None, None, None, None, None, None)\n")
    (tmp_path / "shim.py").write_text(
        "import comfy.sample\n"
        "def fix(m, l):\n"
        "    if hasattr(comfy.sample, 'newer'):\n"
        "        return comfy.sample.fix_empty_latent_channels(m, l, 1, 1, 1, 1)\n"
        "    return comfy.sample.fix_empty_latent_channels(m, l)\n")
    found = import_check.problems(import_check.check(HOST_DIR, tmp_path))
    text = "\n".join(found)
    assert "comfy.samplers.no_such_function at broken.py:2" in text
    assert "comfy_extras.nodes_custom_sampler.NoSuchNode at broken.py:3" in text
    assert "comfy.sample.fix_empty_latent_channels at broken.py:4" in text
    assert "shim.py" in text  # a call that binds on one host only, outside nodes/bridge/compat.py
