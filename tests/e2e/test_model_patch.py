"""Issue 15 in a real server: the stock KSampler on a patched MODEL, its report, per-run state."""

import numpy as np
import pytest
from PIL import Image

from tools.host.api_graph import api_workflows, load, nodes_of, retarget

pytestmark = pytest.mark.e2e

SIZE, STEPS = 64, 4


def ksampler_graph(sd15_checkpoint, name):
    return retarget(load(api_workflows()[0].with_name(f"{name}.json")), ckpt_name=sd15_checkpoint.name,
                    size=SIZE, steps=STEPS)


def test_the_report_node_shows_the_ksampler_run(server, sd15_checkpoint):
    graph = ksampler_graph(sd15_checkpoint, "ksampler_apg")
    entry = server.run_prompt(graph, timeout=600)
    report = "".join(entry["outputs"][next(iter(nodes_of(graph, "GuidanceLab_GuidanceReport")))]["text"])
    assert "policy: apg (scale=15.0" in report and f"NFE: {2 * STEPS} total" in report


def test_one_patched_model_queued_alternately_with_two_settings(server, sd15_checkpoint):
    """The patched MODEL is one cached object shared by every prompt; each run still gets its
    own state and record: the same settings give the same image and report again."""
    base = ksampler_graph(sd15_checkpoint, "ksampler_ag")
    sampler_id = next(iter(nodes_of(base, "KSampler")))
    report_id = next(iter(nodes_of(base, "GuidanceLab_GuidanceReport")))
    queued = []
    for cfg in (7.5, 3.0, 7.5, 3.0):
        graph = retarget(base)
        graph[sampler_id]["inputs"]["cfg"] = cfg
        queued.append((cfg, server.post_prompt(graph)))
    results = []
    for cfg, prompt_id in queued:
        entry = server.wait_for(prompt_id, timeout=600)
        report = "".join(entry["outputs"][report_id]["text"])
        assert f"scale={cfg}" in report
        image, = server.output_images(entry)
        results.append((report, np.asarray(Image.open(image).convert("RGB"))))
    for first, again in ((0, 2), (1, 3)):
        assert results[first][0] == results[again][0]
        assert np.array_equal(results[first][1], results[again][1])
    assert not np.array_equal(results[0][1], results[1][1])
