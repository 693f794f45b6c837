"""BDIA's and O-BELM's workflows in a real server: the reconstruction is the source image, the
edit changes it, and bad input fails naming node and input while the server goes on serving."""

import numpy as np
import pytest
from PIL import Image

from tools.host.api_graph import api_workflows, load, retarget
from tools.host.comfy_server import history_status

from .test_edict import with_flipped_sigmas, with_stateful_guidance
from .test_server import run_expecting_error, small

pytestmark = pytest.mark.e2e
METHODS = ("o_belm", "bdia")


def graph_of(server, sd15_checkpoint, method):
    return small(server, load(api_workflows()[0].with_name(f"{method}_edit.json")), sd15_checkpoint)


def saved(server, entry, node):
    paths = server.output_images({"outputs": {node: entry["outputs"][node]}}, types=("output", "temp"))
    return np.asarray(Image.open(paths[0]).convert("RGB"), np.int16)


@pytest.mark.parametrize("method", METHODS)
def test_reconstruction_is_the_source_image_and_the_edit_is_not(server, sd15_checkpoint, method):
    graph = graph_of(server, sd15_checkpoint, method)
    graph["5"]["inputs"]["seed"] += METHODS.index(method)  # a fresh source: a cached node reports no output
    # The latent that was inverted, decoded: what the round trip must give back (the VAE's own
    # encode/decode of the source image is not the inversion's to undo).
    graph["40"] = {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}}
    graph["41"] = {"class_type": "PreviewImage", "inputs": {"images": ["40", 0]}}
    entry = server.run_prompt(graph, timeout=600)
    assert history_status(entry)[0] == "success"
    inverted, rebuilt, edited = (saved(server, entry, node) for node in ("41", "13", "17"))
    assert np.abs(rebuilt - inverted).max() <= 1  # to 8-bit rounding
    assert np.abs(edited - inverted).mean() > 1


@pytest.mark.parametrize("method", METHODS)
def test_pair_sampled_with_another_method_fails_clearly(server, sd15_checkpoint, method):
    graph = graph_of(server, sd15_checkpoint, method)
    bad = retarget(graph)
    bad["11"]["inputs"]["method"] = "bdia" if method == "o_belm" else "o_belm"
    message = run_expecting_error(server, bad)
    assert "BDIA / O-BELM Sample (Guidance Lab): input 'pair'" in message and "same method" in message
    assert history_status(server.run_prompt(graph, timeout=600))[0] == "success"


def test_stateful_guidance_and_ascending_sigmas_are_refused(server, sd15_checkpoint):
    graph = graph_of(server, sd15_checkpoint, "o_belm")
    message = run_expecting_error(server, with_stateful_guidance(graph))
    assert "BDIA / O-BELM Invert (Guidance Lab): input 'guidance'" in message
    message = run_expecting_error(server, with_flipped_sigmas(graph))
    assert "BDIA / O-BELM Invert (Guidance Lab): input 'sigmas'" in message and "descending" in message
    assert history_status(server.run_prompt(graph, timeout=600))[0] == "success"
