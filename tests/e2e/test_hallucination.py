"""Hallucination filtering through a real ComfyUI server: the shipped workflow at its own settings
(default model, 32px, 20 steps) splits its batch by the record's scores, and the benchmark runs."""

import importlib
import json

import numpy as np
import pytest

from tools.host.api_graph import load
from tools.host.comfy_server import execution_error, history_status
from tools.image_grid import load_images
from tools.paths import API_WORKFLOWS

pytestmark = pytest.mark.e2e


def test_workflow_keeps_the_low_scored_images_and_flags_the_rest(server):
    graph = load(API_WORKFLOWS / "hallucination_filter.json")
    graph["16"] = {"class_type": "PreviewAny", "inputs": {"source": ["9", 3]}}  # the sampler's record
    entry = server.run_prompt(graph, timeout=600)
    status, _ = history_status(entry)
    assert status == "success", execution_error(entry)
    record = json.loads("".join(entry["outputs"]["16"]["text"]))
    scores = record["hallucination"]["score"]
    threshold = graph["11"]["inputs"]["threshold"]
    batch = graph["8"]["inputs"]["batch_size"]
    assert len(scores) == batch and record["nfe_per_image"] == 2 * 20  # CFG: 2 NFE a step, nothing more
    kept = server.output_images({"outputs": {"12": entry["outputs"].get("12", {})}})
    flagged = server.output_images({"outputs": {"13": entry["outputs"].get("13", {})}})
    assert len(kept) == sum(s <= threshold for s in scores) and len(kept) + len(flagged) == batch
    report = "".join(entry["outputs"]["15"]["text"])
    assert f"kept {len(kept)} of {batch}" in report
    # Kept images are the sampler's own, in batch order.
    decoded = load_images(kept + flagged) if kept + flagged else np.zeros((0,))
    assert decoded.shape[1:] == (32, 32, 3)


def test_hallucination_benchmark_runs_and_writes_its_results(tmp_path):
    bench = importlib.import_module("tools.benchmark.hallucination")
    out = tmp_path / "results"
    assert bench.main(["--weights", "guidance_lab_flow32.safetensors", "--cfg", "3", "--tune-prompts", "1",
                       "--score-prompts", "1", "--tune-batch", "3", "--batch", "3", "--steps", "6", "--out", str(out),
                       "--workdir", str(tmp_path / "server")]) == 0
    data = json.loads((out / "guidance_lab_flow32.json").read_text())
    cell = data["cells"]["cfg 3"]
    assert cell["samples"] == 3 and len(cell["scoring"]["scores"]) == 3 and cell["tuning_samples"] == 3
    assert data["tuning"]["noise_seeds"] != data["scoring"]["noise_seeds"]
    assert set(data["tuning"]["prompts"]).isdisjoint(data["scoring"]["prompts"])
    assert (out / "roc_guidance_lab_flow32.png").stat().st_size > 1000 and (out / "results.md").exists()
