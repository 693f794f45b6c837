"""Issue 11 through the real server's API: one test per numbered item (item 6, the model
fingerprint, is tested in-process in tests/host/test_hardening.py), each followed by a
prompt the server must still run."""

import contextlib
import json
import os
import shutil
import subprocess

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from .small_graphs import base_graph, calibrate_graph, failure, linear_ag_graph, run_ok, serves_next

pytestmark = pytest.mark.e2e
CALIBRATE, GUIDER = "LinearAG Calibrate (Guidance Lab)", "LinearAG Guider (Guidance Lab)"


@pytest.fixture
def ckpt(sd15_checkpoint):
    return sd15_checkpoint.name


@pytest.fixture
def out(server):
    folder = server.output_dir / "linear_ag"
    folder.mkdir(parents=True, exist_ok=True)
    return server.output_dir


def calibration_file(server, ckpt, name, **inputs) -> str:
    """Calibrate through the API; the saved file's name relative to the output folder."""
    entry = run_ok(server, calibrate_graph(ckpt, name, **inputs))
    return "".join(entry["outputs"]["17"]["text"]).split("saved ", 1)[1].split(":", 1)[0]


def expect_refusal(server, graph, node_id, *fragments):
    ids, message, _ = failure(server, graph)
    assert node_id in ids, (ids, message)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_item1_calibrate_never_replaces_a_file_it_did_not_write(server, ckpt, out):
    foreign = out / "linear_ag" / "someones_model.safetensors"
    save_file({"model.weight": torch.ones(4, 4)}, str(foreign), metadata={"format": "pt"})
    before = foreign.read_bytes()
    for name in ("linear_ag/someones_model", "linear_ag/someones_model.safetensors"):
        for overwrite in (False, True):
            expect_refusal(server, calibrate_graph(ckpt, name, overwrite=overwrite), "16",
                           f"{CALIBRATE}: input 'filename'", "not a LinearAG calibration; the pack never replaces it")
    assert foreign.read_bytes() == before
    # A calibration of its own is kept unless 'overwrite' is on: a new numbered name instead.
    first = calibration_file(server, ckpt, "linear_ag/item1")
    second = calibration_file(server, ckpt, "linear_ag/item1")
    assert (first, second) == ("linear_ag/item1.safetensors", "linear_ag/item1_00001.safetensors")
    kept = (out / first).read_bytes()
    assert calibration_file(server, ckpt, "linear_ag/item1", overwrite=True, ridge=0.5) == first
    assert (out / first).read_bytes() != kept
    serves_next(server, ckpt)


@pytest.mark.parametrize("field, value", [("ridge", float("nan")), ("ridge", "nan"), ("cfg", "nan"),
                                          ("cfg", float("nan")), ("ridge", "NaN")])
def test_item2_a_nan_number_is_refused_before_any_work_and_never_written(server, ckpt, out, field, value):
    good = out / calibration_file(server, ckpt, "linear_ag/item2_good")
    before = good.read_bytes()
    graph = calibrate_graph(ckpt, "linear_ag/item2_good", overwrite=True, **{field: value})
    expect_refusal(server, graph, "16", f"{CALIBRATE}: input '{field}' is nan; give a finite number")
    assert good.read_bytes() == before
    assert all(torch.isfinite(t).all() for t in load_file(str(good)).values())
    serves_next(server, ckpt)


def test_item3_a_symlink_named_without_its_suffix_cannot_lead_outside(server, ckpt, out):
    outside = server.workdir / "outside_item3"
    outside.mkdir(exist_ok=True)
    victim = outside / "victim.safetensors"
    shutil.move(out / calibration_file(server, ckpt, "linear_ag/item3_src"), victim)
    link = out / "linear_ag" / "item3_link.safetensors"
    if not link.is_symlink():
        link.symlink_to(victim)
    before = victim.read_bytes()
    for name in ("linear_ag/item3_link", "linear_ag/item3_link.safetensors"):
        expect_refusal(server, linear_ag_graph(ckpt, name), "4",
                       f"{GUIDER}: input 'coefficients_file'", "points outside ComfyUI's output folder")
        expect_refusal(server, calibrate_graph(ckpt, name, overwrite=True), "16",
                       f"{CALIBRATE}: input 'filename'", "points outside ComfyUI's output folder")
    assert victim.read_bytes() == before
    serves_next(server, ckpt)


def test_item4_ridge_zero_the_declared_minimum_calibrates(server, ckpt, out):
    name = calibration_file(server, ckpt, "linear_ag/item4", ridge=0.0, overwrite=True)
    assert all(torch.isfinite(t).all() for t in load_file(str(out / name)).values())
    entry = run_ok(server, linear_ag_graph(ckpt, name))
    assert "policy: linear-ag" in "".join(entry["outputs"]["12"]["text"])
    serves_next(server, ckpt)


def test_item5_a_record_with_hundreds_of_metrics_gives_a_capped_plot(server, ckpt):
    from guidance_lab.nodes.bridge.record_plot import MAX_PANELS, PANEL_HEIGHT, WIDTH

    steps = [{"step": i, "nfe": 2, "metrics": {f"metric_{k}": [0.01 * i] * 16 for k in range(300)}}
             for i in range(20)]
    record = json.dumps({"policy": "cfg", "batch_size": 16, "steps": steps})
    graph = {"1": {"class_type": "GuidanceLab_RecordPlot", "inputs": {"record": record}},
             "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    entry = run_ok(server, graph)
    (image,) = server.output_images(entry, types=("temp",))
    assert Image.open(image).size == (WIDTH, PANEL_HEIGHT * (MAX_PANELS + 1) + 30)
    serves_next(server, ckpt)


@contextlib.contextmanager
def tmpfs(path, options):
    """A small tmpfs mounted inside the output folder (a mount point, not a link), or a skip."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder):
    with open(folder / "filler", "wb") as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()


@pytest.mark.parametrize("options", ["ro,size=1m", "size=256k"], ids=["read-only", "full"])
def test_item7_a_read_only_or_full_folder_fails_before_the_runs(server, ckpt, out, options):
    with tmpfs(out / f"item7_{options.split(',')[0].replace('=', '')}", options) as folder:
        if "ro" not in options:
            fill(folder)
        # 256 runs would take minutes: the refusal comes before the first one.
        graph = calibrate_graph(ckpt, f"{folder.name}/c", runs=256)
        expect_refusal(server, graph, "16", f"{CALIBRATE}: input 'filename' cannot be saved in",
                       "free disk space, make the folder writable or choose another name")
    serves_next(server, ckpt)


@pytest.mark.parametrize("name, problem", [
    ("linear_ag/a\x00b", "contains a control character"),
    ("linear_ag/" + "x" * 300, "has a path component longer than 255 bytes"),
    ("x/" * 600, "characters long; give a name of at most 1024"),
    ("linear_ag/item7_folder", "names the folder"),
    ("linear_ag/", "names a folder"),
], ids=["nul", "long-part", "long-name", "folder-target", "folder-name"])
def test_item7_bad_file_names_name_node_and_input(server, ckpt, out, name, problem):
    (out / "linear_ag" / "item7_folder.safetensors").mkdir(exist_ok=True)
    expect_refusal(server, calibrate_graph(ckpt, name), "16", f"{CALIBRATE}: input 'filename'", problem)
    expect_refusal(server, linear_ag_graph(ckpt, name), "4", f"{GUIDER}: input 'coefficients_file'")
    serves_next(server, ckpt)


def test_item7_a_malformed_record_names_the_plot_node_and_input(server, ckpt):
    for record in ('{"steps": [{"step": 0}]}', '{"steps": [{"nfe": 1, "metrics": {"c": "x"}}]}', "[1, 2]"):
        graph = {"1": {"class_type": "GuidanceLab_RecordPlot", "inputs": {"record": record}},
                 "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
        expect_refusal(server, graph, "1", "Guidance Record Plot (Guidance Lab): input 'record' cannot be plotted")
    serves_next(server, ckpt)


def test_item7_a_video_latent_into_a_guider_names_guider_and_input(server, ckpt):
    graph = base_graph(ckpt)
    graph["8"] = {"class_type": "EmptyHunyuanLatentVideo",
                  "inputs": {"width": 64, "height": 64, "length": 9, "batch_size": 1}}
    expect_refusal(server, graph, "9", "CFG Guider (Guidance Lab): input 'latent_image' of the sampler is 5-D",
                   "(a video latent?)", "this model takes 4-D latents")
    serves_next(server, ckpt)


@pytest.mark.parametrize("node, field, value, kind", [
    ("4", "model", 5, "MODEL"), ("9", "sampler", "euler", "SAMPLER"),
    ("9", "sigmas", {"__value__": [1.0, 0.0]}, "SIGMAS"), ("9", "guider", "cfg", "GUIDER"),
    ("9", "noise", 42, "NOISE"), ("9", "latent_image", {"__value__": [1]}, "LATENT"),
])
def test_item7_a_literal_for_a_linked_input_names_node_and_input(server, ckpt, node, field, value, kind):
    graph = base_graph(ckpt)
    graph[node]["inputs"][field] = value
    expect_refusal(server, graph, node, f"input '{field}' is ", f"connect a {kind} output"
                   if kind != "SIGMAS" else "not a noise schedule")
    serves_next(server, ckpt)


def test_item8_ag_inside_ag_reports_its_own_threshold_and_space(server, ckpt):
    graph = base_graph(ckpt)
    graph["13"] = {"class_type": "GuidanceLab_AdaptiveGuidance",
                   "inputs": {"guider": ["4", 0], "threshold": 0.5, "space": "eps"}}
    graph["14"] = {"class_type": "GuidanceLab_AdaptiveGuidance",
                   "inputs": {"guider": ["13", 0], "threshold": 0.9, "space": "x0"}}
    graph["9"]["inputs"]["guider"] = ["14", 0]
    report = "".join(run_ok(server, graph)["outputs"]["12"]["text"])
    assert "policy: ag (threshold=0.9, space=x0, inner=ag, inner_threshold=0.5, inner_space=eps" in report
    assert '"threshold": 0.9, "space": "x0"' in report
    serves_next(server, ckpt)


def test_issue29_a_json_boolean_for_a_number_input_is_refused(server, ckpt):
    """ComfyUI's validation turns ``true`` into 1.0 / 1 before a node sees it; the pack refuses
    it at the door (HTTP 400) naming the node and the input."""
    calibrate_only = calibrate_graph(ckpt, "linear_ag/boolean")
    del calibrate_only["12"]  # an output the bad input does not feed would still run (and "succeed")
    for graph, node_id, name in ((base_graph(ckpt), "4", "cfg"), (calibrate_only, "16", "runs")):
        graph[node_id]["inputs"][name] = True
        ids, message, rejected = failure(server, graph)
        assert rejected and ids == {node_id}, (ids, message)
        assert name in message and "a JSON boolean" in message, message
    graph = base_graph(ckpt)
    graph["4"]["inputs"]["cfg"] = {"__value__": False}
    ids, message, rejected = failure(server, graph)
    assert rejected and ids == {"4"} and "false (a JSON boolean; give a number)" in message, message
    serves_next(server, ckpt)
