"""Guidance benchmark: every method of tools/benchmark/methods.py on the default model, through a
real ComfyUI server, scored by the quality harness.

    make benchmark            # = .host/venv/bin/python -m tools.benchmark.guidance_benchmark
    .host/venv/bin/python -m tools.benchmark.guidance_benchmark --prompts 4 --seeds 2 --steps 6  # quick look
    .host/venv/bin/python -m tools.benchmark.guidance_benchmark --regenerate   # tables and plot from results.json
    .host/venv/bin/python -m tools.benchmark.guidance_benchmark --inversion-only  # re-run the inversion section

Starts ComfyUI with the pack, calibrates LinearAG on prompts and seeds the scoring never
uses, then for each scoring prompt queues one graph per method (rotating their order, after
an untimed warm-up) over the HTTP API. Wall time is the server's own execution time of each
prompt (history timestamps); a method's time ratio is the median over prompts of its time
divided by ComfyUI's CFGGuider time on the same prompt and seeds, measured minutes apart in
this one run. Writes results.json (with every image's scores, so that two rows can be compared
image by image), results.md, the trade-off plot and PNG grids to --out, and copies the tables
into the benchmark page (docs/benchmark.md) between the model's markers.

The scoring prompts are drawn from dataset seed --eval-seed, leaving out the prompts tune.py
tuned AG and LinearAG on and both LinearAG calibration prompts; the noise seeds (0 ..
prompts - 1) are not tune.py's (50000+) nor the calibration's (100000+).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from tools.bootstrap import import_pack
from tools.benchmark.targets import overhead_us_per_evaluation
from tools.paths import BENCHMARK_RESULTS, DOCS, README, run_workdir

import_pack()
from guidance_lab.default_model import DEFAULT_WEIGHTS as WEIGHTS  # noqa: E402
BENCHMARK_PAGE = DOCS / "benchmark.md"  # the tables' home: one section per default model, between markers
CALIBRATION_FILE = "benchmark/linear_ag_calibration.safetensors"
WARMUP_SEED = 10**6
TIMING_SEED = 2 * 10**6  # noise seeds of untimed runs; scoring uses 0..prompts-1, LinearAG 100000+
NFE_LINE = re.compile(r"NFE: (\d+) total, ([0-9.]+) per image")
DECISIONS_LINE = re.compile(r"^decisions: (.*)$", re.M)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=48,
                   help="scoring prompts (held-out dataset prompts; 48 x 4 seeds = 192 images per row)")
    p.add_argument("--seeds", type=int, default=4, help="images per prompt (one batch, one noise seed)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--weights", default=WEIGHTS, help="default-model file in default_model/weights/")
    p.add_argument("--eval-seed", type=int, default=777, help="dataset seed the scoring prompts come from")
    p.add_argument("--calibration-seed", type=int, default=31337,
                   help="dataset seed of the LinearAG calibration prompt (not a scoring prompt)")
    p.add_argument("--real-count", type=int, default=1000, help="dataset images for the scene distance")
    p.add_argument("--methods", nargs="+", default=None, help="only these rows (names in methods.py)")
    p.add_argument("--out", type=Path, default=None,
                   help="results folder (default: docs/benchmark/<weights file stem>/)")
    p.add_argument("--workdir", type=Path, default=None, help="server folder (default: a temp folder)")
    p.add_argument("--grid-prompts", type=int, default=8)
    p.add_argument("--timing-pairs", type=int, default=24,
                   help="extra back-to-back runs of each overhead row and its baseline (ComfyUI CFG and "
                        "the pack's CFG; stock and patched KSampler), same prompt and seed, alternating "
                        "which goes first")
    p.add_argument("--inversion-pairs", type=int, default=96,
                   help="source/edit prompt pairs of the inversion section (EDICT, BDIA and O-BELM beside DDIM "
                        "inversion; 96 puts Wilson's interval of an 88 %% share above 80 %%); 0 skips it")
    p.add_argument("--inversion-only", action="store_true",
                   help="run only the inversion section and put it into the results.json stored in --out "
                        "(the other rows kept as they are), then regenerate the tables as --regenerate does")
    p.add_argument("--update-rows", action="store_true",
                   help="with --methods: run those rows (with their references and the time baseline, no "
                        "inversion section) and replace them in the results.json stored in --out, the other "
                        "rows kept as they are; then regenerate the tables as --regenerate does")
    p.add_argument("--page", "--readme", dest="page", type=Path, default=None,
                   help="Markdown page to copy the tables into, between the model's benchmark markers "
                        "(default: docs/benchmark.md, when --out is the default)")
    p.add_argument("--regenerate", action="store_true",
                   help="run nothing: rewrite results.md, the verdicts in results.json, the trade-off plot "
                        "and the page's tables from the results.json stored in --out")
    args = p.parse_args(argv)
    if args.update_rows and not args.methods:
        p.error("--update-rows needs --methods: the rows to run and replace")
    args.default_out = BENCHMARK_RESULTS / Path(args.weights).stem
    args.out = args.out or args.default_out
    return args


def scoring_prompts(count: int, eval_seed: int, excluded) -> list:
    """``count`` prompts of dataset ``eval_seed`` in draw order, skipping ``excluded`` (a prompt
    drawn twice is scored twice, on other noise seeds)."""
    from tools.training.dataset import prompt_for, sample_scene

    excluded, prompts, index = set(excluded), [], 0
    while len(prompts) < count:
        prompt = prompt_for(sample_scene(eval_seed, index, 32))
        index += 1
        if prompt not in excluded:
            prompts.append(prompt)
        if index > 1000 * max(count, 1):
            raise SystemExit(f"dataset seed {eval_seed} yields too few prompts outside the {len(excluded)} excluded")
    return prompts


def execution_seconds(entry: dict) -> float:
    """Server-side execution time of one prompt, from its history's status messages."""
    stamps = {name: data.get("timestamp") for name, data in entry["status"]["messages"]}
    return (stamps["execution_success"] - stamps["execution_start"]) / 1000.0


class Runner:
    """Queues graphs on the server and keeps, per method, images, times and NFE reports."""

    def __init__(self, server, args):
        from tools.benchmark.methods import tuned

        self.server, self.args = server, args
        self.context = {"linear_ag_file": CALIBRATION_FILE, "agd_adapter": shipped_agd_adapter(args.weights),
                        **tuned(Path(args.weights).name)}

    def graph(self, method, prompt: str, seed: int, batch: int, tag: str) -> dict:
        from tools.benchmark.graph import Scene, base_graph, finish_graph, guided_sample

        scene = Scene(prompt, seed, batch, self.args.steps, self.args.weights)
        g, ids = base_graph(scene)
        latent = method.sample(g, ids, self.context) if method.sample else \
            guided_sample(g, ids, *method.build(g, ids, self.context))
        return finish_graph(g, ids, latent, f"benchmark/{method.name}/{tag}")

    def run(self, graph: dict) -> dict:
        from tools.host.comfy_server import execution_error, history_status

        entry = self.server.run_prompt(graph, timeout=900)
        status, _ = history_status(entry)
        if status != "success":
            raise RuntimeError(f"benchmark graph failed: {json.dumps(execution_error(entry), indent=1)}")
        return entry

    def calibrate(self, prompt: str, cfg: float, calibration: dict) -> str:
        from tools.benchmark.graph import Scene, base_graph, out

        g, ids = base_graph(Scene(prompt, 0, self.args.seeds, self.args.steps, self.args.weights))
        sampler = out(g.add("KSamplerSelect", "sampler", sampler_name="euler"))
        cal = g.add("GuidanceLab_LinearAGCalibrate", "calibrate", model=ids["model"], positive=ids["positive"],
                    negative=ids["negative"], sampler=sampler, sigmas=ids["sigmas"], latent_image=ids["latent"],
                    cfg=cfg, ridge=1e-4, filename=CALIBRATION_FILE.removesuffix(".safetensors"), overwrite=True,
                    **calibration)
        g.add("PreviewAny", "report", source=out(cal, 1))
        entry = self.run(g.nodes)
        return "".join(entry["outputs"].get("report", {}).get("text", []))

    def sample(self, method, prompt: str, seed: int, tag: str) -> dict:
        from tools.image_grid import load_images

        entry = self.run(self.graph(method, prompt, seed, self.args.seeds, tag))
        images = load_images(self.server.output_images(entry))
        # The Guided Sampler or a Guidance Report node shows the run's NFE report.
        report = "".join(t for output in entry["outputs"].values() for t in output.get("text", []))
        nfe = NFE_LINE.search(report)
        decisions = DECISIONS_LINE.search(report)
        return {"images": images, "seconds": execution_seconds(entry),
                "nfe_per_image": float(nfe.group(2)) if nfe else None,
                "decisions": json.loads(decisions.group(1)) if decisions else None}


def shipped_agd_adapter(weights: str):
    """The AGD adapter file the pack ships for the default model ``weights``, or None."""
    from guidance_lab.default_model import AGD_ADAPTERS, AGD_DIR

    name = AGD_ADAPTERS.get(Path(weights).name)
    return name if name and (AGD_DIR / name).is_file() else None


def measure_overhead(runner, baseline, method, prompt: str, pairs: int) -> dict:
    """Seconds of ``baseline`` and ``method`` run back to back on one prompt (its encoding is
    cached after the first run) with a fresh seed per pair, alternating which runs first."""
    runner.sample(baseline, prompt, TIMING_SEED - 1, "timing")  # encode the prompt, untimed
    base, ours, nfe = [], [], []
    for k in range(pairs):
        order = [(baseline, base), (method, ours)]
        for m, times in (order if k % 2 == 0 else order[::-1]):
            r = runner.sample(m, prompt, TIMING_SEED + k, "timing")
            times.append(r["seconds"])
            if m is method:
                nfe.append(r["nfe_per_image"])
    ratios = sorted(b / a for a, b in zip(base, ours))
    # Guided evaluations (model calls of the whole batch, cond and uncond together) per run:
    # the pack's CFG spends 2 NFE on each, 1 at scale 1.
    evaluations = statistics.median(nfe) / (1 if method.cfg == 1.0 else 2) if all(nfe) else None
    timing = {"pairs": pairs, "baseline_seconds": base, "method_seconds": ours, "method": method.name,
            "ratio_of_medians": statistics.median(ours) / statistics.median(base),
            "median_pair_ratio": statistics.median(ratios),
            "pair_ratio_iqr": [float(np.percentile(ratios, 25)), float(np.percentile(ratios, 75))],
            "evaluations_per_run": evaluations}
    return {**timing, "overhead_us_per_evaluation": overhead_us_per_evaluation(timing)}


def stock_nfe(method, steps: int) -> float:
    """NFE of a row ComfyUI samples without the pack's record: the row's own count where it
    has one, else CFGGuider's (cond and uncond at every step, cond only at CFG 1)."""
    if method.stock_nfe is not None:
        return method.stock_nfe(steps)
    return float(steps if method.cfg == 1.0 else 2 * steps)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.regenerate:
        from tools.benchmark.report import regenerate

        args.weights = json.loads((args.out / "results.json").read_text())["meta"]["weights"]
        summary = regenerate(args.out)
        print(summary)
        publish(args, summary)
        return 0
    if args.inversion_only:
        return rerun_inversion(args)
    if args.update_rows:
        return update_rows(args)
    import_pack()
    from tools.benchmark.methods import BASELINE, BY_NAME, CFG, LINEAR_AG_CALIBRATION, METHODS, tuned
    from tools.benchmark.report import write_results
    from tools.training.dataset import make_batch
    from tools.host.comfy_server import ComfyServer
    from tools.bootstrap import ensure_host_importable

    ensure_host_importable()
    methods = [BY_NAME[n] for n in args.methods] if args.methods else list(METHODS)
    if shipped_agd_adapter(args.weights) is None:
        asked = [m.name for m in methods if m.needs_agd and args.methods]
        if asked:
            raise SystemExit(f"{', '.join(asked)}: the pack ships no AGD adapters for {args.weights}")
        methods = [m for m in methods if not m.needs_agd]
    names = {m.name for m in methods}
    # A row's reference and the time baseline always run: they are what the row is compared to.
    for extra in sorted({BASELINE} | {m.reference for m in methods if m.reference}):
        if extra not in names:
            methods.insert(0, BY_NAME[extra])
            names.add(extra)

    from tools.benchmark.tune import tuning_prompts

    _, calibration_prompts, _ = make_batch(args.calibration_seed, 0, 1, 32)
    tuned_on, tuning_calibration = tuning_prompts()
    args.excluded_prompts = sorted(set(tuned_on) | set(tuning_calibration) | set(calibration_prompts))
    prompts = scoring_prompts(args.prompts, args.eval_seed, args.excluded_prompts)

    workdir = args.workdir or run_workdir("benchmark")
    shutil.rmtree(workdir, ignore_errors=True)
    results = {name: {"images": [], "seconds": [], "nfe": [], "nfe_counted": [], "decisions": []} for name in names}
    t_start = time.monotonic()
    with ComfyServer(workdir) as server:
        print(f"[benchmark] ComfyUI up in {server.start_seconds:.1f} s ({server.url('/')}); "
              f"{len(methods)} methods x {args.prompts} prompts x {args.seeds} seeds, {args.steps} steps",
              flush=True)
        runner = Runner(server, args)
        calibration_report = ""
        if any(m.needs_calibration for m in methods):
            # Noise seeds 100000+ and a prompt outside the scoring set: LinearAG is scored on
            # seeds 0..prompts-1 it was never fitted on.
            calibration_report = runner.calibrate(calibration_prompts[0], CFG, LINEAR_AG_CALIBRATION)
            print(f"[benchmark] LinearAG calibrated on {calibration_prompts[0]!r}: "
                  f"{calibration_report.splitlines()[0]}", flush=True)
        for method in methods:  # warm-up: first-use costs (imports, weights) stay out of the times
            runner.sample(method, calibration_prompts[0], WARMUP_SEED, "warmup")
        for i, prompt in enumerate(prompts):
            # Untimed: encodes the prompt, which ComfyUI then caches for every method. Another
            # noise seed, or the baseline's timed run would be a cache hit.
            runner.sample(BY_NAME[BASELINE], prompt, WARMUP_SEED + i, "warmup")
            order = methods[i % len(methods):] + methods[:i % len(methods)]
            for method in order:
                r = runner.sample(method, prompt, i, f"p{i:03d}")
                slot = results[method.name]
                slot["images"].append(r["images"])
                slot["seconds"].append(r["seconds"])
                slot["nfe"].append(r["nfe_per_image"] if r["nfe_per_image"] is not None
                                   else stock_nfe(method, args.steps))
                slot["nfe_counted"].append(r["nfe_per_image"] is not None)
                slot["decisions"].append(r["decisions"])
            print(f"[benchmark] prompt {i + 1}/{len(prompts)} done ({time.monotonic() - t_start:.0f} s)",
                  flush=True)
        # Overhead targets: the row and its baseline back to back, pair by pair, on one prompt.
        timing = {m.name: measure_overhead(runner, BY_NAME[m.paired_with], m, prompts[0], args.timing_pairs)
                  for m in methods if m.paired_with and m.paired_with in names}
        inversion = run_inversion(runner, args) if args.inversion_pairs else None

    real_images, real_prompts, _ = make_batch(args.eval_seed + 1, 0, args.real_count, 32)
    dataset_images, dataset_prompts, _ = make_batch(args.eval_seed + 2, 0, args.prompts * args.seeds, 32)
    summary = write_results(
        args.out, methods, results, prompts, args,
        real_images=real_images, dataset=(dataset_images, dataset_prompts),
        calibration={"prompt": calibration_prompts[0], **LINEAR_AG_CALIBRATION, "report": calibration_report},
        settings=tuned(Path(args.weights).name),
        wall_seconds=time.monotonic() - t_start, timing=timing, inversion=inversion)
    print(summary)
    publish(args, summary)
    return 0


def run_inversion(runner, args) -> dict:
    from tools.benchmark import inversion as inv

    # Another dataset seed than the scoring prompts': editing is judged on fresh scenes.
    pairs = inv.edit_pairs(args.inversion_pairs, args.eval_seed + 3)
    return inv.run_section(runner, pairs, args.steps, args.weights, log=lambda line: print(line, flush=True))


def update_rows(args) -> int:
    """Rows ``args.methods`` run anew (with their references, in a scratch folder) and put into the
    results.json stored in ``args.out``; every other row, the timing and the inversion kept."""
    from tools.benchmark.report import regenerate

    stored_out = args.out
    stored = json.loads((stored_out / "results.json").read_text())
    scratch = run_workdir("benchmark-rows")
    # Another results folder than the model's own: the inner run publishes nothing.
    main([*argv_of(args), "--out", str(scratch / "out"), "--inversion-pairs", "0"])
    fresh = json.loads((scratch / "out" / "results.json").read_text())
    for name in args.methods:
        stored["methods"][name] = fresh["methods"][name]
        grid = scratch / "out" / f"grid_{name}.png"
        if grid.is_file():
            shutil.copy(grid, stored_out / grid.name)
    # The settings the text reports are those of the rows that ran them (the tuned ones may
    # have changed since the stored run).
    for key in ("ag", "linear_ag"):
        if key in args.methods:
            stored["meta"]["settings"][key] = fresh["meta"]["settings"][key]
    rerun = {"rows": list(args.methods), **{k: fresh["meta"][k] for k in ("date", "wall_seconds")}}
    stored["meta"].setdefault("rows_rerun", []).append(rerun)
    (stored_out / "results.json").write_text(json.dumps(stored))
    args.weights = stored["meta"]["weights"]
    summary = regenerate(stored_out)
    print(summary)
    publish(args, summary)
    return 0


def argv_of(args) -> list:
    """The command line of a run of the same model, steps, prompts and seeds as ``args``."""
    return ["--weights", args.weights, "--steps", str(args.steps), "--prompts", str(args.prompts), "--seeds",
            str(args.seeds), "--eval-seed", str(args.eval_seed), "--methods", *args.methods,
            "--timing-pairs", str(args.timing_pairs)]


def rerun_inversion(args) -> int:
    """The inversion section alone, on the model and steps of the results stored in ``args.out``."""
    from tools.benchmark.report import regenerate, store_inversion
    from tools.bootstrap import ensure_host_importable
    from tools.host.comfy_server import ComfyServer

    ensure_host_importable()
    stored = json.loads((args.out / "results.json").read_text())
    args.weights, args.steps = stored["meta"]["weights"], stored["meta"]["steps"]
    workdir = args.workdir or run_workdir("benchmark-inversion")
    shutil.rmtree(workdir, ignore_errors=True)
    t_start = time.monotonic()
    with ComfyServer(workdir) as server:
        inversion = run_inversion(Runner(server, args), args)
    stored["inversion"] = store_inversion(args.out, inversion)
    stored["meta"]["inversion_rerun"] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                         "wall_seconds": time.monotonic() - t_start}
    (args.out / "results.json").write_text(json.dumps(stored))
    summary = regenerate(args.out)
    print(summary)
    publish(args, summary)
    return 0


def publish(args, summary: str) -> None:
    """Copy the tables into the benchmark page (by default only for the default results folder)."""
    page = args.page or (BENCHMARK_PAGE if args.out.resolve() == args.default_out.resolve() else None)
    if page is not None:
        update_page(page, summary, Path(args.weights).stem)
        print(f"[benchmark] tables copied into {page}")
    if page == BENCHMARK_PAGE:
        update_readme_summary()
        print(f"[benchmark] verdicts summarised in {README}")


def update_readme_summary() -> None:
    """Rewrite the README's results summary from every stored results.json."""
    from tools.benchmark.report import SUMMARY_MARKERS, replace_between, summary_table

    README.write_text(replace_between(README.read_text(), SUMMARY_MARKERS, summary_table(BENCHMARK_RESULTS)))


def page_markers(model: str) -> tuple:
    """The benchmark page's markers around one model's tables."""
    return f"<!-- benchmark:{model}:start -->", f"<!-- benchmark:{model}:end -->"


def update_page(page: Path, table: str, model: str) -> None:
    """Replace the text between the page's benchmark markers of ``model`` with the new tables."""
    start_marker, end_marker = page_markers(model)
    text = page.read_text()
    start, end = text.find(start_marker), text.find(end_marker)
    if start < 0 or end < start:
        raise SystemExit(f"{page} has no {start_marker} ... {end_marker} markers: add them where the "
                         f"section of model {model!r} belongs")
    page.write_text(text[:start + len(start_marker)] + "\n" + table + text[end:])


if __name__ == "__main__":
    sys.exit(main())
