"""The benchmark's statistics (tools/benchmark/stats.py) and the verdicts built on them, on
synthetic scores: Wilson intervals, the paired bootstrap, met / not met / undecided, and the
tables and plot regenerated from stored results with and without per-image scores."""

import json

import numpy as np
import pytest
from PIL import Image

from tools.benchmark import stats


def test_wilson_matches_published_values_and_stays_inside_0_1():
    # Newcombe (1998), table I / Wilson score interval: 0/10, 10/10, 5/10, 81/263 at 95 %.
    assert stats.wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert stats.wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert stats.wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert stats.wilson(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert stats.wilson(0, 0) == (0.0, 1.0)
    # the stored-share form recovers the count
    assert stats.wilson_of_share(0.9583333333, 96) == stats.wilson(92, 96)
    # more images, a narrower interval
    lo96, hi96 = stats.wilson(92, 96)
    lo192, hi192 = stats.wilson(184, 192)
    assert hi192 - lo192 < hi96 - lo96


def test_wilson_covers_the_true_proportion_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    for p, n in ((0.95, 192), (0.6, 96)):
        hits = rng.binomial(n, p, size=4000)
        covered = np.mean([lo <= p <= hi for lo, hi in (stats.wilson(k, n) for k in hits)])
        assert 0.93 <= covered <= 0.975, (p, n, covered)


def test_paired_bootstrap_of_identical_rows_is_exactly_zero():
    a = [1, 0, 1, 1] * 48
    d = stats.paired_bootstrap(a, a, groups=[i // 4 for i in range(192)])
    assert (d["mean"], d["lo"], d["hi"], d["n"], d["groups"]) == (0.0, 0.0, 0.0, 192, 48)
    assert stats.judge_at_least(d["lo"], d["hi"], -0.02) == stats.MET


def test_paired_bootstrap_is_deterministic_and_brackets_the_mean():
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 2, 192), rng.integers(0, 2, 192)
    d1, d2 = stats.paired_bootstrap(a, b), stats.paired_bootstrap(a, b)
    assert d1 == d2
    assert d1["lo"] <= d1["mean"] <= d1["hi"]
    assert d1["mean"] == pytest.approx(np.mean(a) - np.mean(b))
    with pytest.raises(ValueError):
        stats.paired_bootstrap([1, 0], [1])


def test_a_gap_of_three_images_in_96_cannot_decide_a_two_point_target():
    """The issue's case: AG at -3.1 points against a 2-point slack is one or two images."""
    ref = np.ones(96)
    row = ref.copy()
    row[[5, 40, 77]] = 0  # 3 images lost: -3.1 points
    d = stats.paired_bootstrap(row, ref, groups=[i // 4 for i in range(96)])
    assert d["mean"] == pytest.approx(-3 / 96)
    assert stats.judge_at_least(d["lo"], d["hi"], -0.02) == stats.UNDECIDED
    # a real, large loss is not met; a clear gain over a bound is met
    row[:30] = 0
    d = stats.paired_bootstrap(row, ref, groups=[i // 4 for i in range(96)])
    assert stats.judge_at_least(d["lo"], d["hi"], -0.02) == stats.NOT_MET
    unguided = np.r_[np.ones(40), np.zeros(56)]
    d = stats.paired_bootstrap(ref, unguided, groups=[i // 4 for i in range(96)])
    assert stats.judge_at_least(d["lo"], d["hi"], 0.25) == stats.MET


def test_the_cluster_bootstrap_widens_the_interval_when_a_prompts_seeds_agree():
    """The 4 seeds of one prompt share its batch: when they fail together, resampling prompts
    (not images) is what keeps the interval honest."""
    ref = np.ones(192)
    row = np.ones(192)
    row[:24] = 0  # 6 prompts lose all 4 seeds
    groups = [i // 4 for i in range(192)]
    clustered = stats.paired_bootstrap(row, ref, groups=groups)
    independent = stats.paired_bootstrap(row, ref)
    assert clustered["mean"] == independent["mean"]
    assert clustered["hi"] - clustered["lo"] > 1.5 * (independent["hi"] - independent["lo"])


def test_verdicts_combine_part_by_part():
    assert stats.judge_at_most(0.0, 0.01, 0.02) == stats.MET
    assert stats.judge_at_most(0.03, 0.05, 0.02) == stats.NOT_MET
    assert stats.judge_at_most(0.01, 0.03, 0.02) == stats.UNDECIDED
    assert stats.combine(stats.MET, stats.MET) == stats.MET
    assert stats.combine(stats.MET, stats.UNDECIDED) == stats.UNDECIDED
    assert stats.combine(stats.UNDECIDED, stats.NOT_MET) == stats.NOT_MET
    assert stats.combine(stats.exact(True), stats.RERUN) == stats.RERUN
    assert stats.combine(stats.exact(False), stats.RERUN) == stats.NOT_MET


def _row(label, nfe, hits_per_prompt, **extra):
    flat = [h for g in hits_per_prompt for h in g]
    return {"label": label, "cfg": 5.0, "nfe_per_image": nfe, "nfe_counted": True, "time_ratio": 1.0,
            "adherence": float(np.mean(flat)), "mean_chroma": 0.2, "clipped_fraction": 0.01,
            "rmse_to_cfg": 0.0, "psnr_to_cfg": None, "scene_distance": 1.0,
            "per_image": {"adherence": hits_per_prompt}, **extra}


def test_nfe_saving_target_reads_the_paired_interval():
    from tools.benchmark import targets

    prompts = 48
    cfg = [[1, 1, 1, 1] for _ in range(prompts)]
    close = [list(g) for g in cfg]
    close[3][1] = close[20][0] = 0  # -1.0 point
    far = [[0, 0, 1, 1] for _ in range(prompts)]  # -50 points
    rows = {"cfg": _row("CFG", 40.0, cfg), "ag": _row("AG", 29.0, close), "bad": _row("bad", 29.0, far),
            "cheap": _row("no saving", 39.0, cfg)}
    check = targets.nfe_saving(0.25, 0.02, "cfg")
    name, verdict, text = check("ag", rows, {}, None)
    assert verdict == stats.UNDECIDED and "95% CI" in text and "48 prompts paired" in text
    assert check("bad", rows, {}, None)[1] == stats.NOT_MET
    assert check("cheap", rows, {}, None)[1] == stats.NOT_MET  # the NFE part fails whatever the images say
    assert targets.nfe_saving(0.25, 0.05, "cfg")("ag", rows, {}, None)[1] == stats.MET
    # results stored before per-image scores: the adherence part needs a re-run
    old = {n: {k: v for k, v in r.items() if k != "per_image"} for n, r in rows.items()}
    name, verdict, text = check("ag", old, {}, None)
    assert verdict == stats.RERUN and "re-run" in text
    assert check("cheap", old, {}, None)[1] == stats.NOT_MET


def test_edict_editing_target_is_judged_on_wilsons_interval():
    from tools.benchmark import inversion as inv

    def summary(landed: list):
        rows = [{"judged": {"edict": {"landed": h, "kept": True, "both": h},
                            "ddim": {"landed": True, "kept": True, "both": True}}} for h in landed]
        share = {"landed": float(np.mean(landed)), "kept": 1.0, "both": float(np.mean(landed))}
        return {"pairs": len(landed), "rows": rows, "cost_ratio_median": 2.0, "cost_ratio_iqr": [1.9, 2.05],
                "success": {"edict": share, "ddim": {"landed": 1.0, "kept": 1.0, "both": 1.0}}}

    assert inv.targets(summary([True] * 20 + [False] * 4))[0][1] == stats.UNDECIDED  # 83 % of 24
    assert inv.targets(summary([True] * 48))[0][1] == stats.MET
    assert inv.targets(summary([True] * 10 + [False] * 38))[0][1] == stats.NOT_MET
    assert inv.targets(summary([True] * 24))[1][1] == stats.MET  # the cost part: its paired median


def _stored(per_image: bool, prompts: int = 6, seeds: int = 4) -> dict:
    rng = np.random.default_rng(3)
    cfg = [[1] * seeds for _ in range(prompts)]
    rows = {"comfy_cfg_1": _row("ComfyUI CFG 1", 20.0, rng.integers(0, 2, (prompts, seeds)).tolist()),
            "comfy_cfg": _row("ComfyUI CFG 5", 40.0, cfg), "cfg": _row("CFG 5", 40.0, cfg),
            "ag": _row("AG", 29.7, [[1, 1, 1, 0]] + cfg[1:]),
            "linear_ag": _row("LinearAG", 24.0, [[1, 0, 1, 0]] * prompts)}
    if not per_image:
        for row in rows.values():
            del row["per_image"]
    meta = {"prompts": prompts, "distinct_prompts": prompts, "seeds": seeds, "images": prompts * seeds, "steps": 20,
            "weights": "guidance_lab_flow32.safetensors", "comfyui": "0.3.75", "machine": "test", "real_count": 10,
            "wall_seconds": 1.0, "date": "2026-12-01 00:00 UTC", "eval_seed": 777, "calibration": {},
            "settings": {"ag": {"threshold": 0.999}, "linear_ag": {}}}
    dataset = {"label": "dataset", "adherence": 1.0, "mean_chroma": 0.1, "clipped_fraction": 0.0,
               "scene_distance": 0.2}
    return {"meta": meta, "methods": rows, "dataset": dataset, "prompts": ["p"] * prompts, "overhead_timing": None,
            "inversion": None}


@pytest.mark.parametrize("per_image", [True, False])
def test_tables_and_plot_regenerate_from_stored_results(tmp_path, per_image):
    from tools.benchmark import report

    (tmp_path / "results.json").write_text(json.dumps(_stored(per_image)))
    table = report.regenerate(tmp_path)
    stored = json.loads((tmp_path / "results.json").read_text())
    assert "adherence (95% CI)" in table and "| target | verdict | measured |" in table
    # every row's adherence carries its Wilson interval
    for row in stored["methods"].values():
        lo, hi = row["adherence_ci"]
        assert lo <= row["adherence"] <= hi
    lo, hi = stored["methods"]["linear_ag"]["adherence_ci"]
    assert f"0.500 ({lo:.3f}-{hi:.3f})" in table
    verdicts = {t["target"].split(":")[0]: t["verdict"] for t in stored["targets"]}
    assert set(verdicts.values()) <= set(stats.VERDICTS)
    assert all(t["met"] == (t["verdict"] == stats.MET) for t in stored["targets"])
    if per_image:
        assert verdicts["ag"] == stats.UNDECIDED  # one image of 24
        assert verdicts["linear_ag"] == stats.NOT_MET  # half the images lost
        assert "re-run" not in table
    else:
        assert verdicts["ag"] == stats.RERUN and verdicts["linear_ag"] == stats.RERUN
        assert "measured before per-image scores were stored" in table
    with Image.open(tmp_path / "tradeoff.png") as plot:
        assert plot.size == (1000, 640)
        # points drawn: some pixels carry the families' colours
        pixels = {tuple(p) for p in np.asarray(plot.convert("RGB")).reshape(-1, 3)}
    assert (20, 150, 70) in pixels and (30, 110, 210) in pixels


def test_per_image_scores_agree_with_the_harness_shares():
    from tools.benchmark.report import per_image_scores
    from tools.quality.shapes import label_accuracy, saturation_stats
    from tools.training.dataset import make_batch

    images, prompts, _ = make_batch(5, 0, 8, 32)
    wrong = prompts[1:] + prompts[:1]  # mostly mismatched prompts: a mix of 0 and 1
    for asked in (prompts, wrong):
        scores = per_image_scores(images, asked[::2], 2)
        assert [len(g) for g in scores["adherence"]] == [2, 2, 2, 2]
        flat = [h for g in scores["adherence"] for h in g]
        per_image_prompts = [p for p in asked[::2] for _ in range(2)]
        assert np.mean(flat) == pytest.approx(label_accuracy(images, per_image_prompts)["adherence"])
    sat = saturation_stats(images)
    assert np.mean([c for g in scores["chroma"] for c in g]) == pytest.approx(sat["mean_chroma"], abs=1e-5)
    assert np.mean([c for g in scores["clipped"] for c in g]) == pytest.approx(sat["clipped_fraction"], abs=1e-5)


def test_scoring_prompts_leave_out_what_the_tuning_saw():
    from tools.benchmark.guidance_benchmark import parse_args, scoring_prompts
    from tools.benchmark.tune import tuning_prompts

    args = parse_args([])
    assert args.prompts * args.seeds >= 192
    tuned_on, calibration = tuning_prompts()
    excluded = set(tuned_on) | set(calibration)
    prompts = scoring_prompts(args.prompts, args.eval_seed, excluded)
    assert len(prompts) == args.prompts and not excluded & set(prompts)
    # the same draw as before, minus the excluded prompts
    assert scoring_prompts(5, args.eval_seed, ()) == scoring_prompts(5, args.eval_seed, ())


def _update_rows(tmp_path, monkeypatch, stored_results: dict, fresh_results: dict, methods: list) -> tuple:
    """Run update_rows over ``stored_results`` with the inner run faked to write ``fresh_results``;
    returns the inner run's command line and the stored results afterwards."""
    from pathlib import Path

    from tools.benchmark import guidance_benchmark as gb
    from tools.benchmark import report

    stored = tmp_path / "stored"
    stored.mkdir()
    (stored / "results.json").write_text(json.dumps(stored_results))
    ran = []

    def fake_main(argv):
        ran.append(argv)
        out = Path(argv[argv.index("--out") + 1])
        out.mkdir(parents=True)
        (out / "results.json").write_text(json.dumps(fresh_results))
        (out / "grid_o_belm.png").write_bytes(b"png")

    monkeypatch.setattr(gb, "main", fake_main)
    monkeypatch.setattr(gb, "run_workdir", lambda kind: tmp_path / kind)
    monkeypatch.setattr(gb, "publish", lambda args, summary: None)
    monkeypatch.setattr(report, "regenerate", lambda out: "tables")
    args = gb.parse_args(["--weights", "w.safetensors", "--methods", *methods, "--update-rows", "--out", str(stored)])
    assert gb.update_rows(args) == 0
    return ran[0], json.loads((stored / "results.json").read_text())


def test_update_rows_replaces_only_the_rows_it_ran(tmp_path, monkeypatch):
    """--methods X --update-rows: X runs in a scratch folder with its references and replaces X in
    the stored results; every other row, the timing and the inversion stay as they were."""
    from tools.benchmark import guidance_benchmark as gb

    argv, result = _update_rows(
        tmp_path, monkeypatch,
        {"meta": {"weights": "w.safetensors"}, "inversion": {"kept": 1},
         "methods": {"o_belm": {"adherence": 0.8}, "comfy_cfg": {"adherence": 0.9}, "apg": {"adherence": 0.7}}},
        {"meta": {"date": "today", "wall_seconds": 1.0},
         "methods": {"o_belm": {"adherence": 0.95}, "comfy_cfg": {"adherence": 0.91}}}, ["o_belm"])
    assert "--inversion-pairs" in argv and argv[argv.index("--inversion-pairs") + 1] == "0"
    assert result["methods"] == {"o_belm": {"adherence": 0.95}, "comfy_cfg": {"adherence": 0.9},
                                 "apg": {"adherence": 0.7}}
    assert result["inversion"] == {"kept": 1} and result["meta"]["rows_rerun"][0]["rows"] == ["o_belm"]
    assert (tmp_path / "stored" / "grid_o_belm.png").read_bytes() == b"png"
    with pytest.raises(SystemExit):
        gb.parse_args(["--update-rows"])


def test_update_rows_reports_the_settings_the_rerun_rows_ran(tmp_path, monkeypatch):
    """Rerunning AG after its tuned threshold changed: the text must name the new threshold, and
    LinearAG's, not rerun, keeps the stored one."""
    old = {"ag": {"threshold": 0.995}, "linear_ag": {"warmup_steps": 2}}
    new = {"ag": {"threshold": 0.9995}, "linear_ag": {"warmup_steps": 3}}
    _, result = _update_rows(
        tmp_path, monkeypatch,
        {"meta": {"weights": "w.safetensors", "settings": old}, "methods": {"ag": {"adherence": 0.7}}},
        {"meta": {"date": "today", "wall_seconds": 1.0, "settings": new}, "methods": {"ag": {"adherence": 0.8}}},
        ["ag"])
    assert result["meta"]["settings"] == {"ag": {"threshold": 0.9995}, "linear_ag": {"warmup_steps": 2}}
