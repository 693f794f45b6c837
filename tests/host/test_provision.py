"""The provisioner's tree host (issue 28): what it installs and unpacks, without building a venv."""

import tarfile

import pytest

from tools.host import provision

pytestmark = pytest.mark.host


def make_tree(root, version="9.9.9"):
    root.mkdir(parents=True)
    (root / "main.py").write_text("")
    (root / "comfyui_version.py").write_text(f'__version__ = "{version}"\n')
    (root / "requirements.txt").write_text("torch\ntorchvision\ntorchaudio>=2\nnumpy>=1.25.0\ntorchsde\n")
    return root


def test_a_tree_gets_its_own_requirements_with_the_torch_family_pinned(tmp_path):
    pins = provision.read_lock()
    text, key = provision.tree_requirements(make_tree(tmp_path / "ComfyUI"), pins)
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert "numpy>=1.25.0" in lines and "torchsde" in lines
    assert not {"torch", "torchvision", "torchaudio>=2"} & set(lines)
    assert {*pins["torch"].split(), pins["tree_torchaudio"]} <= set(lines)
    assert key != provision.venv_key(pins)  # never the pinned host's venv
    (tmp_path / "ComfyUI" / "requirements.txt").write_text("torch\nnumpy\n")
    assert provision.tree_requirements(tmp_path / "ComfyUI", pins)[1] != key  # keyed by what it installs


def test_a_tarball_unpacks_to_its_top_folder_and_names_its_version(tmp_path):
    tree = make_tree(tmp_path / "src" / "ComfyUI-9.9.9")
    tarball = tmp_path / "comfyui.tar.xz"
    with tarfile.open(tarball, "w:xz") as tf:
        tf.add(tree, arcname="ComfyUI-9.9.9")
    unpacked = provision.unpack_source(tarball, tmp_path / "out")
    assert unpacked.name == "ComfyUI-9.9.9" and provision.tree_version(unpacked) == "9.9.9"
    assert provision.source_stamp(tarball) == provision.source_stamp(tarball)
    with pytest.raises(provision.StepFailed, match="not a ComfyUI tree"):
        provision.tree_version(tmp_path)
