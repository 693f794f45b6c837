"""Hallucination benchmark: does the trajectory-variance score (guiders/trajectory_variance.py) find
the default models' out-of-support samples? Through a real ComfyUI server, per default model and
CFG scale, judged by the in-support analyser (tools/quality/support.py).

    .host/venv/bin/python -m tools.benchmark.hallucination          # every default model
    .host/venv/bin/python -m tools.benchmark.hallucination --weights guidance_lab_flow32.safetensors \\
        --tune-prompts 2 --score-prompts 2 --batch 4                  # quick look

Each graph is the pack's CFG guider and Guided Sampler (euler_ancestral, the stochastic sampling the
paper scores, normal schedule) on one dataset prompt with a batch of noise draws; the run's record
carries each sample's score. The threshold is chosen on tuning graphs (other prompts, other noise
seeds) as the score that keeps 90% of their in-support samples, then applied to the scoring graphs.
Writes docs/benchmark/hallucination/<weights stem>.json and roc_<weights stem>.png, and results.md
from every model's JSON there (a run of one model keeps the others' rows).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from tools.bootstrap import import_pack
from tools.paths import BENCHMARK_RESULTS, run_workdir

import_pack()
from guidance_lab.default_model import SHIPPED  # noqa: E402

OUT = BENCHMARK_RESULTS / "hallucination"
SCALES = (1.0, 3.0, 5.0)
KEEP_IN_SUPPORT = 0.9  # the threshold keeps this share of the tuning graphs' in-support samples
TUNE_DATA_SEED, SCORE_DATA_SEED = 2024, 777  # dataset seeds of the prompts
TUNE_NOISE_SEED = 50000  # noise seeds of tuning graphs: 50000+, scoring graphs: 0+


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", nargs="+", default=list(SHIPPED), help="default-model files")
    p.add_argument("--cfg", nargs="+", type=float, default=list(SCALES))
    p.add_argument("--tune-prompts", type=int, default=6, help="tuning graphs per scale (one prompt each)")
    p.add_argument("--score-prompts", type=int, default=6, help="scoring graphs per scale (one prompt each)")
    p.add_argument("--tune-batch", type=int, default=3, help="noise draws per tuning graph")
    p.add_argument("--batch", type=int, default=6, help="noise draws per scoring graph")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sampler", default="euler_ancestral")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--workdir", type=Path, default=None)
    return p.parse_args(argv)


def prompts_by_shape(data_seed: int, count: int) -> list:
    """``count`` prompts cycling through the dataset's shapes (colour and backdrop from the dataset's
    own draw): shapes hallucinate at very different rates, so a random draw of a few prompts (mostly
    circles, say) would say more about the draw than about the score."""
    from tools.training.dataset import SHAPES, make_batch, prompt_of

    _, _, scenes = make_batch(data_seed, 0, count, 32)
    return [prompt_of(SHAPES[i % len(SHAPES)], s.colour, s.background) for i, s in enumerate(scenes)]


def graph(weights: str, prompt: str, seed: int, batch: int, steps: int, sampler: str, cfg: float, tag: str):
    from tools.benchmark.graph import Scene, base_graph, finish_graph, guided_sample, out

    g, ids = base_graph(Scene(prompt, seed, batch, steps, weights, sampler=sampler))
    guider = out(g.add("GuidanceLab_CFGGuider", "guider", model=ids["model"], positive=ids["positive"],
                       negative=ids["negative"], cfg=cfg))
    chosen = out(g.add("KSamplerSelect", "sampler", sampler_name=sampler))
    latent = guided_sample(g, ids, guider, chosen, pack_sampler=True)
    g.add("PreviewAny", "record", source=["sample", 3])
    return finish_graph(g, ids, latent, f"hallucination/{tag}")


def auc(bad, good) -> float:
    """P(score of an out-of-support sample > score of an in-support one), ties half."""
    bad, good = np.asarray(bad, float), np.asarray(good, float)
    if not len(bad) or not len(good):
        return float("nan")
    return float((bad[:, None] > good[None]).mean() + 0.5 * (bad[:, None] == good[None]).mean())


def roc(scores, inside) -> list:
    """[(false-positive rate, true-positive rate)] as the threshold falls: flagged = score above it,
    positive = out of support."""
    scores, inside = np.asarray(scores, float), np.asarray(inside, bool)
    points = [(0.0, 0.0)]
    for t in sorted(set(scores.tolist()), reverse=True):
        flagged = scores >= t
        points.append((float((flagged & inside).sum() / max(inside.sum(), 1)),
                       float((flagged & ~inside).sum() / max((~inside).sum(), 1))))
    return points


def cell_metrics(tune: dict, score: dict) -> dict:
    """Threshold from the tuning samples, its effect on the scoring samples."""
    t_scores, t_in = np.asarray(tune["scores"]), np.asarray(tune["in_support"], bool)
    s_scores, s_in = np.asarray(score["scores"]), np.asarray(score["in_support"], bool)
    threshold = float(np.quantile(t_scores[t_in], KEEP_IN_SUPPORT)) if t_in.any() else float("nan")
    kept = s_scores <= threshold
    out = ~s_in
    best = max(((min(float((s_scores[out] > t).mean()) if out.any() else 1.0,
                     float((s_scores[s_in] <= t).mean()) if s_in.any() else 1.0), t)
                for t in s_scores), default=(float("nan"), None))
    return {
        "tuning_samples": int(len(t_scores)), "tuning_in_support": int(t_in.sum()),
        "threshold": threshold,
        "samples": int(len(s_scores)), "out_of_support": int(out.sum()),
        "hallucination_rate_before": float(out.mean()),
        "hallucination_rate_after": float(out[kept].mean()) if kept.any() else float("nan"),
        "removed_out_of_support": float((~kept[out]).mean()) if out.any() else float("nan"),
        "kept_in_support": float(kept[s_in].mean()) if s_in.any() else float("nan"),
        "kept_share": float(kept.mean()),
        "auc": auc(s_scores[out], s_scores[s_in]),
        # Not held out: the best min(removed, kept) any threshold reaches on the scoring samples,
        # the ceiling of the score itself.
        "oracle_min_removed_kept": best[0],
        "reasons": {r: int(sum(r in rs for rs in score["reasons"])) for r in ("shapes", "colour", "outline",
                                                                             "backdrop")},
        "roc": roc(s_scores, s_in),
    }


def roc_plot(cells: dict, title: str, path: Path) -> None:
    """ROC curves (one per scale) with PIL: false-positive rate (in-support flagged) across, true-positive
    rate (out-of-support flagged) up."""
    from PIL import Image, ImageDraw, ImageFont

    size, pad = 420, 50
    image = Image.new("RGB", (size + 2 * pad + 160, size + 2 * pad), (255, 255, 255))
    draw, font = ImageDraw.Draw(image), ImageFont.load_default()

    def at(fp, tp):
        return pad + fp * size, pad + (1 - tp) * size

    draw.rectangle([pad, pad, pad + size, pad + size], outline=(0, 0, 0))
    draw.line([at(0, 0), at(1, 1)], fill=(190, 190, 190))
    for v in (0.0, 0.5, 1.0):
        draw.text((at(v, 0)[0] - 8, pad + size + 6), f"{v:g}", fill=(0, 0, 0), font=font)
        draw.text((pad - 26, at(0, v)[1] - 6), f"{v:g}", fill=(0, 0, 0), font=font)
    draw.text((pad, 12), title, fill=(0, 0, 0), font=font)
    draw.text((pad + size / 2 - 90, pad + size + 22), "in-support samples flagged", fill=(0, 0, 0), font=font)
    draw.text((4, pad - 24), "out-of-support flagged", fill=(0, 0, 0), font=font)
    colours = [(40, 110, 220), (220, 120, 30), (40, 160, 60), (180, 40, 160)]
    for k, (name, cell) in enumerate(cells.items()):
        colour = colours[k % len(colours)]
        draw.line([at(*p) for p in cell["roc"]], fill=colour, width=3)
        draw.text((pad + size + 14, pad + 16 * k), f"{name}: AUC {cell['auc']:.2f}", fill=colour, font=font)
    image.save(path)


def run_graphs(server, args, weights, cfg, prompts, seed0, kind, batch):
    from tools.host.comfy_server import execution_error, history_status
    from tools.image_grid import load_images
    from tools.quality.support import support_batch

    scores, inside, reasons = [], [], []
    for k, prompt in enumerate(prompts):
        g = graph(weights, prompt, seed0 + k, batch, args.steps, args.sampler, cfg,
                  f"{Path(weights).stem}/cfg{cfg:g}/{kind}{k}")
        entry = server.run_prompt(g, timeout=900)
        status, _ = history_status(entry)
        if status != "success":
            raise RuntimeError(f"hallucination benchmark graph failed: {json.dumps(execution_error(entry))}")
        record = json.loads("".join(entry["outputs"]["record"]["text"]))
        found = support_batch(load_images(server.output_images(entry)))
        batch_scores = record["hallucination"]["score"]
        if len(batch_scores) != len(found):
            raise RuntimeError(f"{len(found)} images but {len(batch_scores)} scores")
        scores += batch_scores
        inside += [f.in_support for f in found]
        reasons += [list(f.reasons) for f in found]
    return {"scores": scores, "in_support": inside, "reasons": reasons}


def write_markdown(out: Path) -> None:
    """results.md from every model's JSON in ``out``, in the order the pack ships them."""
    order = {Path(name).stem: i for i, name in enumerate(SHIPPED)}
    stems = sorted((f.stem for f in out.glob("*.json")), key=lambda stem: (order.get(stem, len(order)), stem))
    results = {stem: json.loads((out / f"{stem}.json").read_text()) for stem in stems}
    lines = ["# Hallucination detection by trajectory variance on the default models", "",
             "Made by `python -m tools.benchmark.hallucination` (see each model's JSON for the command and "
             "settings). Out of support: judged by `tools/quality/support.py`. Threshold: keeps "
             f"{KEEP_IN_SUPPORT:.0%} of the in-support samples of tuning graphs (other prompts and noise "
             "seeds); the other columns are on the scoring graphs. Oracle: the best min(removed, kept) of "
             "any threshold on the scoring samples themselves (not held out).", "",
             "| model | CFG | samples | hallucination rate | after filtering | out-of-support removed | "
             "in-support kept | ROC AUC | oracle |", "|---|---|---|---|---|---|---|---|---|"]
    for model, data in results.items():
        for name, c in data["cells"].items():
            lines.append(f"| {model} | {name.removeprefix('cfg ')} | {c['samples']} | "
                         f"{c['hallucination_rate_before']:.2f} | {c['hallucination_rate_after']:.2f} | "
                         f"{c['removed_out_of_support']:.2f} | {c['kept_in_support']:.2f} | {c['auc']:.2f} | "
                         f"{c['oracle_min_removed_kept']:.2f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    from guidance_lab.guiders.trajectory_variance import DEFAULT_WINDOW
    from tools.host.comfy_server import ComfyServer

    tune_prompts = prompts_by_shape(TUNE_DATA_SEED, args.tune_prompts)
    score_prompts = prompts_by_shape(SCORE_DATA_SEED, args.score_prompts)
    workdir = args.workdir or run_workdir("hallucination")
    shutil.rmtree(workdir, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    started = time.monotonic()
    # One thread: a 32px model gains nothing from more, and the machine is shared.
    with ComfyServer(workdir, env={"OMP_NUM_THREADS": "1"}) as server:
        print(f"[hallucination] ComfyUI up in {server.start_seconds:.1f} s", flush=True)
        for weights in args.weights:
            cells = {}
            for cfg in args.cfg:
                tune = run_graphs(server, args, weights, cfg, tune_prompts, TUNE_NOISE_SEED, "tune", args.tune_batch)
                score = run_graphs(server, args, weights, cfg, score_prompts, 0, "score", args.batch)
                cells[f"cfg {cfg:g}"] = {**cell_metrics(tune, score), "tuning": tune, "scoring": score}
                c = cells[f"cfg {cfg:g}"]
                print(f"[hallucination] {weights} cfg {cfg:g}: rate {c['hallucination_rate_before']:.2f} -> "
                      f"{c['hallucination_rate_after']:.2f}, removed {c['removed_out_of_support']:.2f}, kept "
                      f"{c['kept_in_support']:.2f}, AUC {c['auc']:.2f} ({time.monotonic() - started:.0f} s)",
                      flush=True)
            stem = Path(weights).stem
            results[stem] = {
                "weights": weights, "sampler": args.sampler, "scheduler": "normal", "steps": args.steps,
                "window_noise_level": DEFAULT_WINDOW, "space": "latent (= 2 * image - 1 for these models)",
                "keep_in_support_on_tuning": KEEP_IN_SUPPORT,
                "tuning": {"prompts": tune_prompts, "dataset_seed": TUNE_DATA_SEED,
                           "noise_seeds": [TUNE_NOISE_SEED, TUNE_NOISE_SEED + args.tune_prompts - 1],
                           "batch": args.tune_batch},
                "scoring": {"prompts": score_prompts, "dataset_seed": SCORE_DATA_SEED,
                            "noise_seeds": [0, args.score_prompts - 1], "batch": args.batch},
                "command": "python -m tools.benchmark.hallucination " + " ".join(sys.argv[1:] if argv is None
                                                                                else argv),
                "cells": cells}
            (args.out / f"{stem}.json").write_text(json.dumps(results[stem], indent=1) + "\n")
            roc_plot(cells, f"{stem}: trajectory variance, {args.sampler}, {args.steps} steps",
                     args.out / f"roc_{stem}.png")
    write_markdown(args.out)
    print(f"[hallucination] done in {time.monotonic() - started:.0f} s; results in {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
