"""Score the benchmark's images and write results.json, results.md and the PNG grids."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from ..image_grid import image_grid
from ..quality.metrics import SCENE_FEATURES, distance_to_reference, diversity, scene_distance, scene_features
from ..quality.shapes import label_accuracy, saturation_stats
from .methods import BASELINE, CFG, METHODS

COLUMNS = [  # (key, heading, format)
    ("nfe_per_image", "NFE / image", "{:.1f}"),
    ("time_ratio", "time vs ComfyUI CFG", "{:.3f}"),
    ("adherence", "adherence", "{:.3f}"),
    ("mean_chroma", "saturation (chroma)", "{:.3f}"),
    ("clipped_fraction", "clipped", "{:.4f}"),
    ("diversity", "diversity (RMSE)", "{:.3f}"),
    ("rmse_to_cfg", "RMSE to CFG", "{:.4f}"),
    ("psnr_to_cfg", "PSNR to CFG (dB)", "{:.1f}"),
    ("scene_distance", "scene distance", "{:.3f}"),
]


def _flat(images_per_prompt: list) -> np.ndarray:
    return np.concatenate(images_per_prompt)


def _time_ratio(seconds: list, baseline: list) -> dict:
    ratios = [a / b for a, b in zip(seconds, baseline)]
    q = np.percentile(ratios, [25, 75])
    return {"time_ratio": statistics.median(ratios), "time_ratio_iqr": [float(q[0]), float(q[1])]}


def score(methods, results: dict, prompts: list, seeds: int, real_features: np.ndarray) -> dict:
    per_image_prompts = [p for p in prompts for _ in range(seeds)]
    rows = {}
    for method in methods:
        r = results[method.name]
        images = _flat(r["images"])
        row = {"label": method.label, "cfg": method.cfg,
               "nfe_per_image": float(np.mean(r["nfe"])),
               "nfe_counted": all(r["nfe_counted"]),
               "seconds_median": statistics.median(r["seconds"]),
               **_time_ratio(r["seconds"], results[BASELINE]["seconds"]),
               **label_accuracy(images, per_image_prompts), **saturation_stats(images),
               # Per scored prompt (its index): a prompt the dataset drew twice stays two groups.
               "diversity": diversity(images, [i for i in range(len(prompts)) for _ in range(seeds)])
               if seeds > 1 else None,
               "scene_distance": scene_distance(images, real_features)}
        if method.reference:
            d = distance_to_reference(images, _flat(results[method.reference]["images"]))
            row.update(reference=method.reference, rmse_to_cfg=d["rmse"], psnr_to_cfg=d["psnr"])
        decisions = [d for d in r["decisions"] if d]
        if decisions and "switch_step" in decisions[0]:
            steps = [s for d in decisions for s in d["switch_step"]]
            row["ag_switch_step"] = {"median": float(np.median(steps)), "min": int(min(steps)),
                                     "max": int(max(steps)), "never": sum(1 for s in steps if s < 0)}
        rows[method.name] = row
    return rows


def dataset_row(images, prompts, real_features) -> dict:
    return {"label": "dataset (real images, other seeds)", **label_accuracy(images, prompts),
            **saturation_stats(images), "scene_distance": scene_distance(images, real_features)}


def targets(rows: dict, dataset: dict, timing: dict | None = None) -> list:
    """Every row's own target (``Method.target``), each (description, met, numbers)."""
    out = []
    for method in METHODS:
        if method.target is not None and method.name in rows:
            verdict = method.target(method.name, rows, dataset, timing)
            if verdict is not None:
                out.append(verdict)
    return out


def markdown(rows: dict, dataset: dict, checks: list, meta: dict) -> str:
    def cell(row, key, fmt):
        value = row.get(key)
        if value is None:
            return "–"
        text = fmt.format(value)
        return text + "†" if key == "nfe_per_image" and not row.get("nfe_counted", True) else text

    lines = ["| method | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
             "|---|" + "---:|" * len(COLUMNS)]
    for name, row in rows.items():
        lines.append(f"| {row['label']} (`{name}`) | " + " | ".join(cell(row, k, f) for k, _, f in COLUMNS) + " |")
    lines.append(f"| {dataset['label']} | " + " | ".join(cell(dataset, k, f) if k in dataset else "–"
                                                        for k, _, f in COLUMNS) + " |")
    notes = [
        "",
        f"{meta['prompts']} held-out prompts"
        + (f" ({meta['distinct_prompts']} distinct: a prompt drawn twice is scored twice, on other seeds)"
           if meta.get("distinct_prompts", meta["prompts"]) < meta["prompts"] else "")
        + f" x {meta['seeds']} seeds = {meta['images']} images per method, "
        f"{meta['steps']} steps, euler, normal schedule, default model `{meta['weights']}`, "
        f"through ComfyUI {meta['comfyui']} over HTTP on {meta['machine']}, {meta['date']}; the run took "
        f"{meta['wall_seconds']:.0f} s.",
        "AG and LinearAG settings for this model (tools/benchmark/tune.py, on prompts and seeds not "
        f"scored here): AG {json.dumps(meta['settings'].get('ag'))}, LinearAG "
        f"{json.dumps(meta['settings'].get('linear_ag'))}.",
        "† ComfyUI's own samplers are not instrumented: NFE by construction (2 per step at CFG > 1, 1 at CFG 1; "
        "a KSamplerAdvanced switch row: 2 per guided step, 1 per step after it).",
        "Time: median over prompts of the server's execution time of the whole graph divided by ComfyUI "
        "CFGGuider's on the same prompt and seeds, in this run. Adherence: shape and colour found by "
        "`tools/quality/shapes.py` match the prompt. Saturation: mean chroma (max - min channel; HSV "
        "saturation, in results.json, is inflated by noise on dark pixels); clipped: share of "
        "channel values at 0 or 255. Diversity: mean pairwise RMSE between the seeds of one prompt. "
        f"RMSE/PSNR: against ComfyUI CFG at the same scale and seeds (CFG 1: against CFG {CFG:g}, which "
        "is also AGD's distance before training). Scene distance: Fréchet distance "
        f"to {meta['real_count']} real dataset images on standardised scene features "
        f"({', '.join(SCENE_FEATURES)}); see `tools/quality/metrics.py`.",
        "",
        "| target | met | measured |", "|---|---|---|",
        *[f"| {name} | {'yes' if met else '**no**'} | {numbers} |" for name, met, numbers in checks],
    ]
    return "\n".join(lines + notes) + "\n"


def write_grids(out: Path, methods, results: dict, prompts: list, grid_prompts: int) -> list:
    n = min(grid_prompts, len(prompts))
    paths = []
    for method in methods:
        images = results[method.name]["images"]
        tiles = [list(images[i]) for i in range(n)]
        paths.append(image_grid(out / f"grid_{method.name}.png", tiles, prompts[:n],
                                [f"seed {s}" for s in range(len(images[0]))]))
    tiles = [[results[m.name]["images"][i][0] for m in methods] for i in range(n)]
    # Column headings are the rows' short names (the table gives each name's full label).
    paths.append(image_grid(out / "comparison.png", tiles, prompts[:n], [m.name for m in methods]))
    return paths


def write_inversion(out: Path, inversion: dict, rows: int = 8) -> Path:
    """Source, EDICT edit and DDIM edit of the first pairs, side by side."""
    shown = inversion["rows"][:rows]
    tiles = [[r["images"]["source"], r["images"]["edict"], r["images"]["ddim"]] for r in shown]
    labels = [f"{r['pair']['source']} -> {r['pair']['edit'].split(' on ')[0]}" for r in shown]
    return image_grid(out / "inversion.png", tiles, labels, ["source", "EDICT edit", "DDIM edit"], label_width=420)


def write_results(out: Path, methods, results: dict, prompts: list, args, real_images, dataset, calibration,
                  wall_seconds: float, timing: dict | None = None, inversion: dict | None = None,
                  settings: dict | None = None) -> str:
    from . import inversion as inv

    out.mkdir(parents=True, exist_ok=True)
    real_features = scene_features(real_images)
    rows = score(methods, results, prompts, args.seeds, real_features)
    data_row = dataset_row(*dataset, real_features)
    checks = targets(rows, data_row, timing) + (inv.targets(inversion) if inversion else [])
    try:
        from comfyui_version import __version__ as comfyui
    except ImportError:
        comfyui = "?"
    meta = {"prompts": len(prompts), "distinct_prompts": len(set(prompts)), "seeds": args.seeds,
            "images": len(prompts) * args.seeds,
            "steps": args.steps, "weights": args.weights, "comfyui": comfyui,
            "machine": f"{os.cpu_count()}-core {platform.machine()} CPU", "real_count": len(real_images),
            "wall_seconds": wall_seconds, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "eval_seed": args.eval_seed, "calibration": calibration, "settings": settings or {}}
    table = markdown(rows, data_row, checks, meta)
    if inversion:
        table += "\n" + inv.markdown(inversion) + "\n"
        write_inversion(out, inversion)
    (out / "results.md").write_text(f"# Guidance benchmark ({meta['date']})\n\n"
                                    "`make benchmark` (tools/benchmark/guidance_benchmark.py)\n\n" + table)
    (out / "results.json").write_text(json.dumps(
        {"meta": meta, "methods": rows, "dataset": data_row, "prompts": prompts, "overhead_timing": timing,
         "inversion": {k: v for k, v in inversion.items() if k != "rows"} | {
             "rows": [{k: v for k, v in r.items() if k != "images"} for r in inversion["rows"]]} if inversion else None,
         "targets": [{"target": n, "met": m, "measured": v} for n, m, v in checks]}, indent=1, default=float))
    write_grids(out, methods, results, prompts, args.grid_prompts)
    return table
