"""EDICT's workflows in a real server: bad input fails naming node and input, and the
server goes on to run the next prompt."""

import pytest

from tools.host.api_graph import api_workflows, load, retarget
from tools.host.comfy_server import history_status

from .test_server import run_expecting_error, small

pytestmark = pytest.mark.e2e


def edict_graph(server, sd15_checkpoint, name="edict_edit"):
    return small(server, load(api_workflows()[0].with_name(f"{name}.json")), sd15_checkpoint)


def test_edict_latent_with_another_mixing_weight_fails_clearly(server, sd15_checkpoint):
    graph = edict_graph(server, sd15_checkpoint)
    bad = retarget(graph)
    bad["11"]["inputs"]["mixing_weight"] = 0.9
    message = run_expecting_error(server, bad)
    assert "EDICT Sample (Guidance Lab): input 'edict_latent'" in message and "mixing weight 0.93" in message
    assert history_status(server.run_prompt(graph, timeout=600))[0] == "success"


def with_stateful_guidance(graph, invert="10"):
    """``graph`` with APG and momentum (a policy with state) as its inversion's guidance."""
    bad = retarget(graph)
    bad["30"] = {"class_type": "GuidanceLab_APGGuider",
                 "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "cfg": 5.0,
                            "preset": "SD1.5", "eta": 0.0, "norm_threshold": 6.5, "momentum": -0.5}}
    bad[invert]["inputs"]["guidance"] = ["30", 0]
    return bad


def with_flipped_sigmas(graph, invert="10", schedule="9"):
    """``graph`` with its inversion given the ascending (flipped) schedule."""
    bad = retarget(graph)
    bad["31"] = {"class_type": "FlipSigmas", "inputs": {"sigmas": [schedule, 0]}}
    bad[invert]["inputs"]["sigmas"] = ["31", 0]
    return bad


def test_stateful_guidance_is_refused_and_server_keeps_serving(server, sd15_checkpoint):
    graph = edict_graph(server, sd15_checkpoint, "edict_reconstruct")
    message = run_expecting_error(server, with_stateful_guidance(graph))
    assert "EDICT Invert (Guidance Lab): input 'guidance' cannot be inverted" in message
    assert history_status(server.run_prompt(graph, timeout=600))[0] == "success"


def test_ascending_sigmas_are_refused(server, sd15_checkpoint):
    graph = edict_graph(server, sd15_checkpoint, "edict_reconstruct")
    message = run_expecting_error(server, with_flipped_sigmas(graph))
    assert "EDICT Invert (Guidance Lab): input 'sigmas'" in message and "ascending" in message
    assert history_status(server.run_prompt(graph, timeout=600))[0] == "success"
