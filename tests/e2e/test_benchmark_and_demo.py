"""The benchmark runner and the demo, each run for real (tiny settings) through their own server."""

import importlib
import json

import numpy as np
import pytest
from PIL import Image


def test_benchmark_runs_every_method_through_the_server(tmp_path):
    bench = importlib.import_module("tools.benchmark.guidance_benchmark")
    from tools.benchmark.methods import METHODS

    out = tmp_path / "results"
    assert bench.main(["--prompts", "1", "--seeds", "2", "--steps", "3", "--real-count", "64", "--timing-pairs", "2",
                       "--inversion-pairs", "2", "--out", str(out), "--workdir", str(tmp_path / "server")]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {m.name for m in METHODS}
    rows = results["methods"]
    # measured, not assumed: the pack's rows report the NFE their guider counted
    assert rows["cfg"]["nfe_per_image"] == 6 and rows["cfg"]["nfe_counted"]
    assert rows["comfy_cfg"]["nfe_per_image"] == 6 and not rows["comfy_cfg"]["nfe_counted"]
    assert rows["comfy_cfg_1"]["nfe_per_image"] == 3
    # the pack's CFG policy reproduces ComfyUI's CFGGuider image for image
    assert rows["cfg"]["rmse_to_cfg"] == 0.0 and rows["cfg_15"]["rmse_to_cfg"] == 0.0
    # LinearAG evaluates uncond at its tuned schedule's steps only (of 3 here)
    from guidance_lab.default_model import DEFAULT_WEIGHTS
    from guidance_lab.guiders.linear_ag import evaluated_steps, guided_step_count
    from tools.benchmark.methods import tuned

    schedule = tuned(DEFAULT_WEIGHTS)["linear_ag"]
    evaluated = evaluated_steps(3, schedule["warmup_steps"], schedule["evaluate_every"],
                                guided_step_count(3, schedule.get("guidance_end", 1.0)))
    assert rows["linear_ag"]["nfe_per_image"] == 3 + len(evaluated)
    # the switches fixed in advance: CFG for the first round(share * 3) steps, then the prompt alone
    assert rows["switch_50"]["nfe_per_image"] == 3 + 2 and rows["switch_20"]["nfe_per_image"] == 3 + 1
    assert 0 < rows["switch_50"]["rmse_to_cfg"] < rows["switch_20"]["rmse_to_cfg"]
    # the stock KSampler, plain and patched with the pack's CFG policy, makes the CFGGuider's images
    assert rows["comfy_ksampler"]["rmse_to_cfg"] == 0.0 and rows["ksampler_patch"]["rmse_to_cfg"] == 0.0
    assert rows["ksampler_patch"]["nfe_per_image"] == 6 and rows["ksampler_patch"]["nfe_counted"]
    # AGD with the shipped adapters: one model evaluation per step, counted by the pack's record;
    # CFG 1 is what its zero-initialised adapters would give, so its distance to CFG is AGD's before training
    assert all(rows[n]["nfe_per_image"] == 3 and rows[n]["nfe_counted"] for n in ("agd", "agd_3"))
    assert rows["comfy_cfg_3"]["nfe_per_image"] == 6 and rows["comfy_cfg_1"]["rmse_to_cfg"] > 0
    for row in rows.values():
        assert 0 <= row["adherence"] <= 1 and row["time_ratio"] > 0 and np.isfinite(row["scene_distance"])
    # each overhead row timed pair by pair against its baseline
    assert set(results["overhead_timing"]) == {"cfg", "ksampler_patch"}
    for timing in results["overhead_timing"].values():
        assert len(timing["baseline_seconds"]) == len(timing["method_seconds"]) == 2
        # the guider's own cost, per guided evaluation (3 steps of euler: 3 evaluations)
        assert timing["evaluations_per_run"] == 3 and np.isfinite(timing["overhead_us_per_evaluation"])
    # every row that carries a target is judged
    judged = {t["target"].split(":")[0].split(" ")[0] for t in results["targets"]}
    assert all(t["verdict"] in ("met", "not met", "undecided at this sample size") for t in results["targets"])
    # every row keeps its per-image scores (one list of seeds per prompt) and its adherence interval
    for row in rows.values():
        assert [len(g) for g in row["per_image"]["adherence"]] == [2]
        assert row["adherence_ci"][0] <= row["adherence"] <= row["adherence_ci"][1]
    assert (out / "tradeoff.png").is_file()
    assert {"cfg", "ksampler_patch", "ag", "linear_ag", "apg_15", "agd", "agd_3"} <= judged, judged
    # the inversion section: every inversion of every pair judged, timed side by side, reconstructed
    inversion = results["inversion"]
    assert inversion["methods"] == ["edict", "bdia", "o_belm", "ddim"]
    assert inversion["pairs"] == 2 and inversion["cost_ratio_median"] > 0
    assert all(inversion["cost_ratios"][m]["median"] > 0 for m in ("edict", "bdia", "o_belm"))
    assert inversion["rows"][0]["pair"]["edit"] == "a blue circle on a white background"
    # the exact inversions' round trips are exact; DDIM inversion's is not
    psnr = inversion["reconstruction_psnr_median"]
    assert min(psnr["edict"], psnr["bdia"], psnr["o_belm"]) > 60 > psnr["ddim"]
    assert {"EDICT editing", "EDICT round trip <= 2.1x DDIM inversion + sampling wall time",
            "BDIA editing", "BDIA round trip <= 1.1x DDIM inversion + sampling wall time",
            "O-BELM editing", "O-BELM round trip <= 1.1x DDIM inversion + sampling wall time"} <= judged_full(results)
    assert Image.open(out / "inversion.png").size[0] > 5 * 96
    table = (out / "results.md").read_text()
    assert all(m.label in table for m in METHODS)
    for name in [m.name for m in METHODS]:
        grid = Image.open(out / f"grid_{name}.png")
        assert grid.size[0] > 2 * 96
    assert Image.open(out / "comparison.png").size[0] > len(METHODS) * 96


def test_overhead_per_evaluation_has_the_sign_of_the_overhead_percentage():
    """Both figures come from the median pair ratio (a difference of medians could disagree)."""
    from tools.benchmark.targets import overhead

    timing = {"cfg": {"pairs": 3, "baseline_seconds": [1.0, 1.2, 0.9], "method_seconds": [1.03, 1.1, 0.95],
                      "median_pair_ratio": 1.03, "pair_ratio_iqr": [0.95, 1.05], "ratio_of_medians": 0.97,
                      "evaluations_per_run": 20.0}}
    rows = {"cfg": {"nfe_per_image": 40.0}, "comfy_cfg": {"nfe_per_image": 40.0}}
    _, verdict, text = overhead(0.02, "comfy_cfg")("cfg", rows, {}, timing)
    assert verdict == "not met" and text.startswith("overhead +3.0% (+1500 us per model evaluation)"), text


def test_the_source_graph_runs_what_both_timed_edit_graphs_share():
    """ComfyUI runs only an output's ancestors: without these outputs the edit prompt, the
    encoding and the schedule would first run inside whichever timed graph goes first."""
    from tools.benchmark import inversion as inv

    pair = inv.edit_pairs(1, 0)[0]
    source = inv.source_graph(pair, 4, "w.safetensors")
    previews = {n["inputs"]["source"][0] for n in source.values() if n["class_type"] == "PreviewAny"}
    for method in inv.METHODS:
        edit = inv.edit_graph(pair, 4, "w.safetensors", method)
        shared = {k for k, n in edit.items() if n["class_type"] in ("CLIPTextEncode", "VAEEncode", "SplitSigmas")}
        assert all(source[k] == edit[k] for k in shared)  # the same nodes: ComfyUI's cache serves them
        assert shared - {"positive", "negative"} == previews  # the source image needs those two itself


def test_inversion_edit_graph_wires_the_edit_negative():
    from tools.benchmark import inversion as inv

    pair = inv.edit_pairs(1, 0)[0]
    for method, sampler in (("edict", "GuidanceLab_EDICTSample"), ("bdia", "GuidanceLab_BidirectionalSample"),
                            ("o_belm", "GuidanceLab_BidirectionalSample"), ("ddim", "SamplerCustom")):
        default = inv.edit_graph(pair, 4, "w.safetensors", method)
        source = inv.edit_graph(pair, 4, "w.safetensors", method, settings=inv.EditSettings(edit_negative="source"))
        node = next(n for n in default.values() if n["class_type"] == sampler)
        swapped = next(n for n in source.values() if n["class_type"] == sampler)
        positive = next(k for k, n in source.items() if n["class_type"] == "CLIPTextEncode"
                        and n["inputs"]["text"] == pair.source)
        assert swapped["inputs"]["negative"][0] == positive != node["inputs"]["negative"][0]
        # the reconstruction keeps the inversion's negative whatever the edit setting
        rebuilt = inv.edit_graph(pair, 4, "w.safetensors", method, prompt="positive",
                                 settings=inv.EditSettings(edit_negative="source"))
        assert next(n for n in rebuilt.values() if n["class_type"] == sampler)["inputs"]["negative"] == \
            node["inputs"]["negative"]


def test_inversion_under_the_empty_prompt_reconstructs_under_it_and_edits_under_the_edit_prompt():
    """... on the setting's own steps and scheduler, while the source image keeps the benchmark's."""
    from tools.benchmark import inversion as inv

    pair = inv.edit_pairs(1, 0)[0]
    settings = inv.EditSettings(inversion_prompt="empty", steps=7, scheduler="beta")
    for method, invert, sampler in (("edict", "GuidanceLab_EDICTInvert", "GuidanceLab_EDICTSample"),
                                    ("o_belm", "GuidanceLab_BidirectionalInvert", "GuidanceLab_BidirectionalSample"),
                                    ("ddim", "GuidanceLab_DDIMInvert", "SamplerCustom")):
        for prompt, text in (("edit", pair.edit), ("positive", "")):
            graph = inv.edit_graph(pair, 4, "w.safetensors", method, prompt=prompt, settings=settings)
            texts = {k: n["inputs"]["text"] for k, n in graph.items() if n["class_type"] == "CLIPTextEncode"}
            node = {n["class_type"]: n["inputs"] for n in graph.values()}
            assert texts[node[invert]["positive"][0]] == ""
            assert texts[node[sampler]["positive"][0]] == text
            assert node["BasicScheduler"]["steps"] == 8 and node["KSampler"]["steps"] == 4
            assert node["BasicScheduler"]["scheduler"] == "beta" and node["KSampler"]["scheduler"] == "normal"
    with pytest.raises(ValueError, match="inversion_prompt"):
        inv.EditSettings(inversion_prompt="edit")
    # tune_inversion's --settings text, in field order
    assert inv.EditSettings.parse("3,5,1.0,empty,0.93,7,empty,beta") == inv.EditSettings(
        inversion_cfg=3.0, inversion_prompt="empty", steps=7, scheduler="beta")
    assert inv.EditSettings.parse("3,8,0.9") == inv.EditSettings(inversion_cfg=3.0, edit_cfg=8.0, strength=0.9)
    assert inv.EditSettings.parse("3,12,1.0,empty,0.8,0,source,normal,apg,0,5") == inv.EditSettings(
        inversion_cfg=3.0, edit_cfg=12.0, mixing_weight=0.8, edit_guidance="apg", apg_norm_threshold=5.0)
    assert inv.EditSettings.parse("3,5,1.0,empty,0.93,0,source,normal,cfg,0,0,0.92").gamma == 0.92  # BDIA's
    with pytest.raises(ValueError, match="at most 12 values"):
        inv.EditSettings.parse("3,5,1.0,empty,0.93,7,empty,beta,cfg,0,0,0.9,9")


def test_inversion_apg_edit_guidance_reaches_both_re_samplings_and_not_the_reconstruction():
    from tools.benchmark import inversion as inv

    pair = inv.edit_pairs(1, 0)[0]
    settings = inv.EditSettings(edit_cfg=12.0, edit_guidance="apg", apg_eta=0.5, apg_norm_threshold=5.0)
    for method, sampler in (("edict", "GuidanceLab_EDICTSample"), ("ddim", "SamplerCustomAdvanced")):
        graph = inv.edit_graph(pair, 4, "w.safetensors", method, settings=settings)
        apg = next(k for k, n in graph.items() if n["class_type"] == "GuidanceLab_APGGuider")
        node = {n["class_type"]: n["inputs"] for n in graph.values()}
        assert node[sampler]["guidance" if method == "edict" else "guider"][0] == apg
        assert {k: node["GuidanceLab_APGGuider"][k] for k in ("cfg", "eta", "norm_threshold", "momentum")} == \
            {"cfg": 12.0, "eta": 0.5, "norm_threshold": 5.0, "momentum": 0.0}  # momentum 0: EDICT can invert it
        texts = {k: n["inputs"]["text"] for k, n in graph.items() if n["class_type"] == "CLIPTextEncode"}
        assert texts[node["GuidanceLab_APGGuider"]["positive"][0]] == pair.edit
        rebuilt = inv.edit_graph(pair, 4, "w.safetensors", method, prompt="positive", settings=settings)
        assert not any(n["class_type"] == "GuidanceLab_APGGuider" for n in rebuilt.values())
    with pytest.raises(ValueError, match="edit_guidance"):
        inv.EditSettings(edit_guidance="cfg++")


def test_inversion_edit_pairs_change_one_attribute_in_the_datasets_own_wording():
    from tools.benchmark import inversion as inv
    from tools.training.dataset import parse_prompt, prompt_of

    pairs = inv.edit_pairs(49, 4242)
    assert any(p.changes == "shape" and p.edit.startswith("an orange ") for p in pairs)
    for pair in pairs:
        before, after = parse_prompt(pair.source), parse_prompt(pair.edit)
        changed = {name for name, a, b in zip(("shape", "colour", "background"), before, after) if a != b}
        assert changed == {pair.changes}
        assert pair.edit == prompt_of(*after)  # "an orange star", never "a orange star"


def test_inversion_settings_per_model_reach_both_edict_nodes():
    from tools.benchmark import inversion as inv

    pair = inv.edit_pairs(1, 0)[0]
    settings = inv.EditSettings(edit_cfg=9.0, mixing_weight=0.8)
    graph = inv.edit_graph(pair, 4, "w.safetensors", "edict", settings=settings)
    edict = [n["inputs"] for n in graph.values() if n["class_type"].startswith("GuidanceLab_EDICT")]
    assert [n["mixing_weight"] for n in edict] == [0.8, 0.8]
    assert [n["cfg"] for n in edict] == [settings.inversion_cfg, 9.0]
    assert inv.settings_for("not_tuned.safetensors") == inv.EditSettings()
    for name, tuned in inv.TUNED.items():
        assert inv.settings_for(f"{name}.safetensors") == tuned


def test_inversion_judge_names_each_kept_part():
    from tools.benchmark import inversion as inv
    from tools.training.dataset import make_batch

    images, prompts, _ = make_batch(3, 0, 2, 32)
    image = images[0]
    pair = inv.EditPair(prompts[0], prompts[0], "colour", 0)
    same = inv.judge(pair, image, image)
    assert same["landed"] and same["kept"] and same["moved"] == 0.0
    assert same["kept_parts"] == {"background": True, "position": True, "shape": True, "area": True}
    moved = inv.judge(inv.EditPair(prompts[0], prompts[0], "shape", 0), image, np.roll(image, 8, axis=1))
    assert not moved["kept_parts"]["position"] and not moved["kept"] and set(moved["kept_parts"]) == {
        "background", "position"}


def judged_full(results) -> set:
    return {t["target"].split(":")[0].split(", same")[0] for t in results["targets"]}


def test_demo_writes_images_a_grid_and_their_adherence(tmp_path):
    demo = importlib.import_module("tools.demo")
    out = tmp_path / "demo"
    assert demo.main(["--prompt", "a red circle on a white background", "--seeds", "2", "--steps", "4",
                      "--out", str(out)]) == 0
    images = sorted(out.glob("00_*.png"))
    assert len(images) == 2 and np.asarray(Image.open(images[0])).shape == (32, 32, 3)
    assert (out / "grid.png").is_file()
    assert "adherence" in (out / "report.txt").read_text()
