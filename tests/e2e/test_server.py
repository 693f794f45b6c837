"""The pack in a real ComfyUI server: import, node info, every API workflow, bad input."""

import numpy as np
import pytest
from PIL import Image

from tools.host.api_graph import api_workflows, load, nodes_of, retarget
from tools.host.comfy_server import PromptRejected, execution_error, history_status

pytestmark = pytest.mark.e2e

SIZE, STEPS = 64, 4


def pack_node_ids() -> set:
    """The ids of the pack's node list (nodes.extension.NODES), the one registry of its nodes."""
    from tools.bootstrap import ensure_host_importable

    ensure_host_importable()
    from guidance_lab.nodes.extension import NODES

    return {node.define_schema().node_id for node in NODES}


def small(server, graph, sd15_checkpoint):
    return retarget(graph, ckpt_name=sd15_checkpoint.name, size=SIZE, steps=STEPS)


def test_pack_imports_without_failure(server):
    assert server.custom_node_loaded("guidance_lab") is True
    assert server.import_failures("guidance_lab") == []


def test_pack_nodes_are_listed_with_tooltips(server):
    info = server.get_json("/object_info")
    ours = {k for k, v in info.items() if v["python_module"].endswith("guidance_lab")}
    assert ours == pack_node_ids()
    for node_id in ours:
        node = info[node_id]
        assert node["category"].startswith("Guidance Lab/")
        assert node["display_name"].endswith("(Guidance Lab)")
        for section in ("required", "optional"):
            for name, spec in node["input"].get(section, {}).items():
                assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"


def test_pack_node_ids_do_not_collide_with_core(server):
    info = server.get_json("/object_info")
    assert all(k.startswith("GuidanceLab_") for k in info if info[k]["python_module"].endswith("guidance_lab"))


@pytest.mark.parametrize("path", api_workflows(), ids=lambda p: p.stem)
def test_api_workflow_runs_and_saves_images(server, sd15_checkpoint, path):
    graph = small(server, load(path), sd15_checkpoint)
    entry = server.run_prompt(graph, timeout=600)
    status, _ = history_status(entry)
    assert status == "success", execution_error(entry)
    images = server.output_images(entry)
    batch = sum(n["inputs"]["batch_size"] for n in graph.values()
                if n["class_type"].startswith("Empty") and "batch_size" in n["inputs"])
    assert len(images) == batch
    for image in images:
        pixels = np.asarray(Image.open(image).convert("RGB"), dtype=np.float32)
        assert pixels.shape == (SIZE, SIZE, 3)
        assert np.isfinite(pixels).all() and pixels.std() > 1.0


def test_guided_sampler_reports_nfe(server, sd15_checkpoint):
    graph = small(server, load(api_workflows()[0].with_name("cfg_guider.json")), sd15_checkpoint)
    entry = server.run_prompt(graph, timeout=600)
    sampler_id = next(iter(nodes_of(graph, "GuidanceLab_GuidedSampler")))
    report = "".join(entry["outputs"][sampler_id]["text"])
    assert f"NFE: {2 * STEPS} total" in report and "policy: cfg (scale=7.5)" in report


def run_expecting_error(server, graph):
    entry = server.run_prompt(graph, timeout=600)
    status, _ = history_status(entry)
    assert status == "error"
    return execution_error(entry)["exception_message"]


def test_mismatched_latent_fails_clearly_and_server_keeps_serving(server, sd15_checkpoint):
    graph = small(server, load(api_workflows()[0].with_name("cfg_guider.json")), sd15_checkpoint)
    bad = retarget(graph)
    # A non-empty 16-channel latent (SD3 layout) for a 4-channel SD1.5 model.
    bad["8"] = {"class_type": "EmptySD3LatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}}
    bad["20"] = {"class_type": "AddNoise", "inputs": {"model": ["1", 0], "noise": ["7", 0], "sigmas": ["6", 0],
                                                       "latent_image": ["8", 0]}}
    bad["9"]["inputs"]["latent_image"] = ["20", 0]
    message = run_expecting_error(server, bad)
    assert "CFG Guider (Guidance Lab)" in message and "'latent_image'" in message and "16 channels" in message
    assert history_status(server.run_prompt(graph, timeout=600))[0] == "success"


def test_empty_conditioning_fails_clearly_and_server_keeps_serving(server, sd15_checkpoint):
    graph = small(server, load(api_workflows()[0].with_name("cfg_guider.json")), sd15_checkpoint)
    bad = retarget(graph)
    bad["4"]["inputs"]["positive"] = {"__value__": []}
    message = run_expecting_error(server, bad)
    assert "CFG Guider (Guidance Lab): input 'positive' is an empty conditioning" in message
    assert history_status(server.run_prompt(graph, timeout=600))[0] == "success"


def test_unknown_sampler_name_is_refused_and_server_keeps_serving(server, sd15_checkpoint):
    graph = small(server, load(api_workflows()[0].with_name("pack_sampler.json")), sd15_checkpoint)
    bad = retarget(graph)
    bad["5"]["inputs"]["sampler_name"] = "no_such_sampler"
    try:
        message = run_expecting_error(server, bad)
    except PromptRejected as rejected:  # validation may refuse it before it runs
        message = str(rejected.body)
    assert "sampler_name" in message and "no_such_sampler" in message
    assert history_status(server.run_prompt(graph, timeout=600))[0] == "success"


def test_queued_prompts_with_different_settings_keep_their_own_records(server, sd15_checkpoint):
    base = small(server, load(api_workflows()[0].with_name("cfg_guider.json")), sd15_checkpoint)
    sampler_id = next(iter(nodes_of(base, "GuidanceLab_GuidedSampler")))
    queued = []
    for cfg, seed in ((7.5, 1), (1.0, 1), (7.5, 2)):
        graph = retarget(base)
        graph["4"]["inputs"]["cfg"] = cfg
        graph["7"]["inputs"]["noise_seed"] = seed
        queued.append((cfg, server.post_prompt(graph)))
    for cfg, prompt_id in queued:
        report = "".join(server.wait_for(prompt_id, timeout=600)["outputs"][sampler_id]["text"])
        nfe = STEPS * (1 if cfg == 1.0 else 2)
        assert f"policy: cfg (scale={cfg})" in report and f"NFE: {nfe} total" in report
