"""The full-size benchmark's harness (tools/benchmark/full_size.py) runs end to end on tiny networks
and writes every row for every network. No timing is asserted: the figures of --quick mean nothing."""

import json

import pytest
import torch

from tools.benchmark import full_size

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def quick_run(host, tmp_path_factory):
    out = tmp_path_factory.mktemp("full_size") / "quick.json"
    page = out.with_suffix(".md")
    threads = torch.get_num_threads()
    try:
        assert full_size.main(["--quick", "--out", str(out), "--page", str(page)]) == 0
    finally:
        torch.set_num_threads(threads)
    return json.loads(out.read_text()), page.read_text()


def test_quick_run_reports_every_row_for_every_network(quick_run):
    data, _ = quick_run
    meta = data["meta"]
    assert meta["config"] == "quick"
    assert meta["torch"] and meta["comfyui"] != "unknown" and meta["hardware"]["processor"] is not None
    assert meta["memory_method"] and meta["sync_method"]
    nets = {r["net"]["name"] for r in data["results"]}
    assert nets == {n.name for n in full_size.config_for("quick").nets}
    for result in data["results"]:
        assert set(result["rows"]) == set(full_size.ROWS), result["net"]["name"]
        for name, row in result["rows"].items():
            if "skipped" in row:
                # Only AGD may be skipped, and only on the DiT, with the reason.
                assert name == "agd" and result["net"]["kind"] == "flux" and "UNet" in row["skipped"]
                continue
            if name == "hallucination_score":
                assert row["score_seconds_share_of_cfg_runs"] is not None
                continue
            assert row["nfe_per_image"] > 0 and row["forward_calls"] > 0, name
            assert row["time_ratio"]["rounds"] == 1, name
            assert isinstance(row["host_reads_per_step"], dict), name  # {} : no read in the step loop
            assert row["peak_mib"] >= 0, name
        # The counter is live: every sampler reads its schedule to the host before its loop.
        assert all(v["syncs"]["setup_host_reads_per_run"] for v in result["variants"].values())
        assert {t["row"] for t in result["targets"]} >= {"cfg", "ksampler_patch", "ag", "linear_ag", "edict",
                                                         "bdia", "o_belm"}


def test_nfe_counts_follow_the_methods(quick_run):
    data, _ = quick_run
    steps = data["meta"]["steps"]
    for result in data["results"]:
        rows = result["rows"]
        assert rows["cfg"]["nfe_per_image"] == rows["cfg"]["baseline_nfe_per_image"] == 2 * steps
        assert rows["ksampler_patch"]["nfe_per_image"] == 2 * steps
        assert rows["ag"]["nfe_per_image"] < 2 * steps and rows["linear_ag"]["nfe_per_image"] < 2 * steps
        # EDICT: two evaluations per step each way; the others one, as DDIM inversion.
        assert rows["edict"]["nfe_per_image"] == 2 * rows["edict"]["baseline_nfe_per_image"]
        assert rows["o_belm"]["nfe_per_image"] <= rows["o_belm"]["baseline_nfe_per_image"]
        if "skipped" not in rows["agd"]:
            assert rows["agd"]["nfe_per_image"] == steps


def test_the_table_names_each_row_and_its_verdicts(quick_run):
    _, page = quick_run
    assert "full-size:quick:start" in page and "full-size:quick:end" in page  # keyed on the JSON file name
    for name in full_size.ROWS:
        assert f"| {name}" in page
    assert "| met |" in page or "| not met |" in page
