"""In-process host tests: the real ComfyUI goes on sys.path before these modules import."""

import pytest

from tools.bootstrap import ensure_host_importable

ensure_host_importable()


@pytest.fixture(scope="session")
def fixture_model(host, sd15_checkpoint):
    """(MODEL, positive, negative) of the fixture checkpoint, loaded once by ComfyUI's loader.
    Tests that patch the model clone it first."""
    from .comfy_graph import encode, load_checkpoint_file

    model, clip, _ = load_checkpoint_file(sd15_checkpoint)
    return model, encode(clip, "a red circle on a white background"), encode(clip, "")


@pytest.fixture
def output_dir(host, tmp_path):
    """ComfyUI's output folder pointed at a temporary folder for one test."""
    import folder_paths

    before = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(tmp_path))
    yield tmp_path
    folder_paths.set_output_directory(before)


@pytest.fixture
def loras(tmp_path, monkeypatch):
    """An empty ComfyUI "loras" folder of the test's own, which LoraLoader-style nodes list."""
    import folder_paths

    folder = tmp_path / "loras"
    folder.mkdir()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "loras",
                        ([str(folder)], folder_paths.supported_pt_extensions))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    return folder
