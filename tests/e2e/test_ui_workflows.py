"""UI-format workflows: listed as templates, every node known, widgets in the right inputs."""

import json

import pytest

from tools.host.api_graph import API_WORKFLOWS, load
from tools.host.ui_graph import ui_to_api
from tools.paths import REPO

pytestmark = pytest.mark.e2e

UI_WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))


def strip_meta(graph):
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in graph.items()}


def test_every_api_workflow_has_a_ui_twin():
    assert {p.name for p in UI_WORKFLOWS} == {p.name for p in API_WORKFLOWS.glob("*.json")}


def test_ui_workflows_are_listed_as_templates(server):
    templates = server.get_json("/workflow_templates")
    assert sorted(templates.get("guidance_lab", [])) == sorted(p.stem for p in UI_WORKFLOWS)
    for path in UI_WORKFLOWS:
        served = server.get_json(f"/api/workflow_templates/guidance_lab/{path.name}")
        assert served == json.loads(path.read_text())


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_ui_workflow_widgets_hold_the_api_values(server, path):
    info = server.get_json("/object_info")
    workflow = json.loads(path.read_text())
    missing = {n["type"] for n in workflow["nodes"]} - info.keys()
    assert not missing, f"unknown node types {missing}"
    assert ui_to_api(workflow, info) == strip_meta(load(API_WORKFLOWS / path.name))


def test_a_corrupted_ui_workflow_is_detected(server):
    info = server.get_json("/object_info")
    workflow = json.loads(UI_WORKFLOWS[0].read_text())
    guider = next(n for n in workflow["nodes"] if n["type"] == "GuidanceLab_CFGGuider")
    guider["widgets_values"].append(3.0)
    with pytest.raises(ValueError, match="left over"):
        ui_to_api(workflow, info)


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_every_ui_workflow_has_a_template_thumbnail(path):
    """The template browser shows workflows/<name>.jpg on the workflow's card
    (made by the browser tests with GUIDANCE_LAB_UPDATE_SCREENSHOTS=1)."""
    assert path.with_suffix(".jpg").is_file()
