"""Property-style: hundreds of generated bad inputs at every pack node through the API.

For every input of every pack node (read from /object_info), values a careless or hostile
client could send: wrong types, NaN and inf (JSON literals and strings), out-of-range
numbers, unknown choices, literals where a link belongs, links of the wrong type, latents
and schedules of the wrong shape, and file names that escape, are too long, hold NUL
bytes, name folders, links or other people's files. Each must end in an HTTP 400 or an
execution error that names the node; no file outside the pack's own output subfolders may
change; and the server must be alive after each.
"""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

from .small_graphs import base_graph, calibrate_graph, failure, run_ok, serves_next
from .test_server import pack_node_ids

pytestmark = pytest.mark.e2e
PACK_SUBFOLDERS = ("linear_ag", "guidance_lab", "agd")  # output subfolders the pack's nodes and workflows write
NAN, INF = float("nan"), float("inf")


# ---------------------------------------------------------------- a valid graph per node

# Nodes that provide every linked type a pack node takes (no output node among them, so a
# prompt runs only what its target needs). "10" decodes a batch of 2: frames for the
# nodes that compare images.
SUPPORT = {**base_graph("CKPT"),
           "10": {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["1", 2]}},
           "11": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}}}
del SUPPORT["12"]
PROVIDES = {"MODEL": ["1", 0], "CLIP": ["1", 1], "VAE": ["1", 2], "CONDITIONING": ["2", 0],
            "LATENT": ["8", 0], "SAMPLER": ["5", 0], "SIGMAS": ["6", 0], "GUIDER": ["4", 0],
            "NOISE": ["7", 0], "IMAGE": ["10", 0], "STRING": ["9", 3]}
TARGET = "100"
# Widget values the defaults do not make valid here (a file that exists, a preset that uses
# the values under test).
OVERRIDES = {
    "GuidanceLab_LinearAGCalibrate": {"filename": "linear_ag/property", "overwrite": True},
    "GuidanceLab_APGGuider": {"preset": "custom (use the values below)"},
    "GuidanceLab_AGDTrain": {"sampling_steps": 1, "training_steps": 1, "batch_size": 1, "adapter_width": 4,
                             "image_size": 64, "filename": "agd/property", "overwrite": True},
}
# Support-node inputs a node's valid graph needs changed: the hallucination score needs two
# denoised estimates at noise level <= 1 (more than the base graph's 2 steps), and the filter
# takes the images of the run that made its record (one image, not the batch of 2 of "10").
BASELINE_EDITS = {"GuidanceLab_HallucinationScore": {"6": {"steps": 10}},
                  "GuidanceLab_HallucinationFilter": {"6": {"steps": 10}, "11": {"batch_size": 1}}}
# Nodes whose valid graph cannot be built on the test server, and why; they still get every
# bad input, only without the check that the unchanged graph runs.
NO_BASELINE = {"GuidanceLab_SmoothLoraLoader": "the test server has no LoRA in its loras folder",
               "GuidanceLab_AGDAdapterLoader": "no adapter for the test checkpoint (tests/host/test_agd.py)",
               "GuidanceLab_AGDGuider": "needs a model with AGD adapters (tests/host/test_agd.py)"}


def inputs_of(info: dict) -> dict:
    return {**info["input"].get("required", {}), **info["input"].get("optional", {})}


def kind_of(spec) -> str:
    return "COMBO" if isinstance(spec[0], list) else spec[0]


def valid_graph(info: dict, class_type: str, ckpt: str, coefficients: str, node_id: str = TARGET) -> dict:
    """``class_type`` at ``node_id``: widgets at their defaults (or OVERRIDES), links to the
    SUPPORT nodes or, for a type only a pack node makes (EDICT_LATENT ...), to such a node."""
    graph = {k: {"class_type": v["class_type"], "inputs": dict(v["inputs"])} for k, v in SUPPORT.items()}
    graph["1"]["inputs"]["ckpt_name"] = ckpt
    inputs = {}
    for name, spec in inputs_of(info[class_type]).items():
        kind, opts = kind_of(spec), (spec[1] if len(spec) > 1 else {})
        if name in OVERRIDES.get(class_type, {}):
            inputs[name] = OVERRIDES[class_type][name]
        elif kind == "STRING" and name == "coefficients_file":
            inputs[name] = coefficients
        elif kind in ("INT", "FLOAT", "BOOLEAN", "STRING", "COMBO") and not opts.get("forceInput"):
            options = spec[0] if isinstance(spec[0], list) else opts.get("options", [])
            inputs[name] = opts.get("default", options[0] if options else None)
        elif kind in PROVIDES:
            inputs[name] = PROVIDES[kind]
        elif name in info[class_type]["input"].get("required", {}):
            maker = next(c for c, i in info.items() if i["python_module"].endswith("guidance_lab")
                         and kind in i["output"])
            maker_id = str(int(node_id) + 10)
            graph.update(valid_graph(info, maker, ckpt, coefficients, maker_id))
            inputs[name] = [maker_id, info[maker]["output"].index(kind)]
    graph[node_id] = {"class_type": class_type, "inputs": inputs}
    for support_id, edits in BASELINE_EDITS.get(class_type, {}).items():
        graph[support_id]["inputs"].update(edits)
    if node_id == TARGET and not info[class_type]["output_node"]:
        graph["101"] = {"class_type": "PreviewAny", "inputs": {"source": [TARGET, 0]}}
    return graph


# ---------------------------------------------------------------- bad values by input kind

# Extra nodes a bad value may link to (added to the graph with it).
VIDEO = {"30": {"class_type": "EmptyHunyuanLatentVideo",
                "inputs": {"width": 64, "height": 64, "length": 5, "batch_size": 1}}}
SD3_NOISY = {"31": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
             "32": {"class_type": "AddNoise", "inputs": {"model": ["1", 0], "noise": ["7", 0],
                                                         "sigmas": ["6", 0], "latent_image": ["31", 0]}}}
NAN_SIGMA = {"33": {"class_type": "SetFirstSigma", "inputs": {"sigmas": ["6", 0], "sigma": NAN}}}
ONE_SIGMA = {"34": {"class_type": "SplitSigmas", "inputs": {"sigmas": ["6", 0], "step": 0}}}
STOCK_GUIDER = {"35": {"class_type": "CFGGuider", "inputs": {"model": ["1", 0], "positive": ["2", 0],
                                                              "negative": ["3", 0], "cfg": 5.0}}}

LITERALS = [5, 1.5, "x", True, {"__value__": [1, 2]}, {"__value__": {"samples": 1}}]
SHAPES = {
    "LATENT": [(["30", 0], VIDEO), (["32", 0], SD3_NOISY)],
    "SIGMAS": [(["33", 0], NAN_SIGMA)],
    "CONDITIONING": [({"__value__": []}, {})],
}
FILE_NAMES = ["", "   ", "\x00", "linear_ag/a\x00b", "linear_ag/a\nb", "x" * 300, "x/" * 600, "/etc/passwd",
              "/tmp/guidance_lab_property", "../outside_property/new", "../../x", "linear_ag/../../outside_property/new",
              ".", "..", "linear_ag/", "linear_ag/.", "C:\\Windows\\x", "foreign_property", "linear_ag/foreign_property",
              "folder_property", "linear_ag/escape_property", "linear_ag/escape_dir_property/new",
              "linear_ag/loop_property"]
# Names that are fine to write to but name nothing the LinearAG Guider can read.
READ_ONLY_NAMES = ["linear_ag/missing_property", "linear_ag/garbage_property", "input_foreign_property"]
RECORDS = ["", "nan", "[]", "{}", "null", "5", '{"steps": 5}', '{"steps": [1]}', '{"steps": [{"nfe": "x"}]}',
           '{"steps": [{"nfe": NaN}]}', '{"steps": [{"nfe": 1e400}]}', '{"steps": [{"nfe": -Infinity}]}',
           '{"steps": [{"nfe": 1, "metrics": {"a": [%s]}}]}' % ",".join(["1"] * 5000),
           '{"steps": [{"nfe": 1, "metrics": {"a": [{}]}}]}', '{"steps": [{"nfe": 1, "metrics": 3}]}',
           '{"steps": [], "decisions": {"switch_step": [true]}}', "[" * 50000,
           '{"steps": [%s]}' % ",".join(['{"nfe": 1}'] * 10001)]


def numbers(kind: str, opts: dict) -> list:
    lo, hi = opts.get("min", -1e6), opts.get("max", 1e6)
    common = [NAN, "nan", "NaN", INF, -INF, "inf", "-inf", lo - 1, hi + 1, "abc", None, {"k": 1},
              {"__value__": "nan"}, [], 1e308 if kind == "FLOAT" else 2**80]
    return common + ([-1e308] if kind == "FLOAT" else ["7.5", -2**80])


def bad_values(class_type: str, name: str, spec: list, optional: bool, samples: bool) -> list:
    """(value, extra nodes) pairs that must be refused for one input (``samples``: the node
    runs the model, so a latent of the wrong shape is wrong for it)."""
    kind, opts = kind_of(spec), (spec[1] if len(spec) > 1 else {})
    wrong_link = ["1", 0] if kind == "LATENT" else ["8", 0]  # a MODEL or a LATENT where it does not belong
    if kind == "COMBO":
        return [(v, {}) for v in ("bogus", 5, None, "", "../x.safetensors")]
    if kind in ("FLOAT", "INT"):
        return [(v, {}) for v in numbers(kind, opts)]
    if kind == "BOOLEAN":
        return []  # ComfyUI turns any value into a bool (bool(x)) before the node sees it
    if kind == "STRING":
        if name == "record":
            return [(v, {}) for v in RECORDS] + [(wrong_link, {})]
        if name == "prompts":  # AGD Train: any text is a prompt; only an empty list is wrong
            return [(v, {}) for v in ("", "   ", "\n \n")]
        names = FILE_NAMES + (READ_ONLY_NAMES if name == "coefficients_file" else [])
        return [(v, {}) for v in names]
    # A literal where a link belongs (null only where the input is required: an optional one may be absent).
    values = [(v, {}) for v in LITERALS + ([] if optional else [None])] + [(wrong_link, {})]
    values += [shape for shape in SHAPES.get(kind, []) if samples or kind != "LATENT"]
    if kind == "GUIDER" and class_type != "GuidanceLab_GuidedSampler":
        values.append((["35", 0], STOCK_GUIDER))  # only the Guided Sampler takes any GUIDER
    if kind == "SIGMAS" and class_type == "GuidanceLab_LinearAGCalibrate":
        values.append((["34", 0], ONE_SIGMA))  # no steps to calibrate
    return values


# ---------------------------------------------------------------- the file system around the server


def snapshot(server) -> dict:
    """size and mtime of every file of the server's folders, except the pack's own output
    subfolders and the server's log."""
    seen = {}
    skip = {server.output_dir / sub for sub in PACK_SUBFOLDERS}
    for folder, dirs, names in os.walk(server.workdir):
        dirs[:] = [d for d in dirs if os.path.join(folder, d) not in map(str, skip)]
        for n in names:
            path = os.path.join(folder, n)
            if path != str(server.log_path):
                st = os.lstat(path)
                seen[path] = (st.st_size, st.st_mtime_ns)
    return seen


def plant_files(server, valid_file) -> None:
    """Targets a bad name could hit: files that are not the pack's, links out, a loop, folders."""
    out, work = server.output_dir, server.workdir
    outside = work / "outside_property"
    outside.mkdir(exist_ok=True)
    (outside / "victim.safetensors").write_bytes(valid_file.read_bytes())
    foreign = {"w": torch.ones(2)}
    save_file(foreign, str(out / "foreign_property.safetensors"), metadata={"format": "pt"})
    save_file(foreign, str(out / "linear_ag" / "foreign_property.safetensors"))
    save_file(foreign, str(server.input_dir / "input_foreign_property.safetensors"))
    (out / "folder_property.safetensors").mkdir(exist_ok=True)
    (out / "linear_ag" / "garbage_property.safetensors").write_bytes(b"\x10" + b"\0" * 7 + b"{not json at all")
    for link, target in (("escape_property.safetensors", outside / "victim.safetensors"),
                         ("escape_dir_property", outside),
                         ("loop_property.safetensors", out / "linear_ag" / "loop_property.safetensors")):
        if not os.path.lexists(out / "linear_ag" / link):
            (out / "linear_ag" / link).symlink_to(target)


# ---------------------------------------------------------------- the test


def test_generated_bad_inputs_are_refused_naming_the_node(server, sd15_checkpoint):
    ckpt = sd15_checkpoint.name
    info = server.get_json("/object_info")
    (server.output_dir / "linear_ag").mkdir(parents=True, exist_ok=True)
    entry = run_ok(server, calibrate_graph(ckpt, "linear_ag/property_valid", overwrite=True))
    coefficients = "".join(entry["outputs"]["17"]["text"]).split("saved ", 1)[1].split(":", 1)[0]
    plant_files(server, server.output_dir / coefficients)

    # Every pack node (nodes.extension.NODES is the one list of them), in a graph that runs unchanged.
    valid = {c: valid_graph(info, c, ckpt, coefficients) for c in sorted(pack_node_ids())}
    for class_type, graph in valid.items():
        if class_type not in NO_BASELINE:
            run_ok(server, graph)

    cases = []
    for class_type in valid:
        required = info[class_type]["input"].get("required", {})
        samples = any(kind_of(s) in ("MODEL", "GUIDER") for s in inputs_of(info[class_type]).values())
        for name, spec in inputs_of(info[class_type]).items():
            cases += [(class_type, name, value, extra)
                      for value, extra in bad_values(class_type, name, spec, name not in required, samples)]
    per_node = {c: sum(1 for case in cases if case[0] == c) for c in valid}
    assert len(cases) >= 200 and min(per_node.values()) >= 4, per_node

    displays = [info[c]["display_name"] for c in valid]
    before = snapshot(server)
    problems = []
    for class_type, name, value, extra in cases:
        bad = {**{k: {"class_type": v["class_type"], "inputs": dict(v["inputs"])}
                  for k, v in valid[class_type].items()}, **extra}
        bad[TARGET]["inputs"][name] = value
        ids, message, rejected = failure(server, bad)
        # A 400 lists the node among its node_errors; an execution error is the node's own,
        # and its message names a pack node (a guider's shape error names the guider).
        if not (TARGET in ids and (rejected or any(d in message for d in displays))):
            problems.append(f"{class_type}.{name} = {value!r:.60}: {ids} {message[:300]}")
        assert server.is_alive() and server.get_json("/system_stats"), f"server died at {class_type}.{name}"
        after = snapshot(server)
        if after != before:
            changed = sorted(set(after.items()) ^ set(before.items()))
            problems.append(f"{class_type}.{name} = {value!r:.60} changed files: {changed[:3]}")
            before = after
    assert not problems, f"{len(problems)} of {len(cases)} cases:\n" + "\n".join(problems[:40])
    serves_next(server, ckpt)
