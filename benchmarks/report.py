"""Score the benchmark's images and write results.json, results.md and the PNG grids."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from ..diagnostics.image_grid import image_grid
from ..quality.metrics import SCENE_FEATURES, distance_to_reference, diversity, scene_distance, scene_features
from ..quality.shapes import label_accuracy, saturation_stats
from .methods import BASELINE

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
               "diversity": diversity(images, per_image_prompts) if seeds > 1 else None,
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
    """Issue 5's targets and issue 3's guidance checks, each (name, met, numbers)."""
    out = []

    def have(*names):
        return all(n in rows for n in names)

    if have("cfg", BASELINE) and timing:
        overhead = timing["median_pair_ratio"] - 1
        out.append(("pack CFG vs ComfyUI CFGGuider at equal NFE: overhead < 3% wall time", overhead < 0.03,
                    f"overhead {overhead * 100:+.1f}%: median of {timing['pairs']} back-to-back pair ratios "
                    f"{timing['median_pair_ratio']:.3f} (IQR {timing['pair_ratio_iqr'][0]:.3f}-"
                    f"{timing['pair_ratio_iqr'][1]:.3f}), ratio of medians {timing['ratio_of_medians']:.3f}; "
                    f"table's per-prompt median {rows['cfg']['time_ratio']:.3f}; NFE "
                    f"{rows['cfg']['nfe_per_image']:.0f} vs {rows[BASELINE]['nfe_per_image']:.0f}"))
    for name, saving, slack in (("ag", 0.20, 0.02), ("linear_ag", 0.35, 0.05)):
        if have(name, "cfg"):
            fewer = 1 - rows[name]["nfe_per_image"] / rows["cfg"]["nfe_per_image"]
            gap = rows["cfg"]["adherence"] - rows[name]["adherence"]
            out.append((f"{name}: >= {saving:.0%} fewer NFE than CFG, adherence within {slack * 100:.0f} points",
                        fewer >= saving and gap <= slack,
                        f"{fewer:.1%} fewer NFE ({rows[name]['nfe_per_image']:.1f} vs "
                        f"{rows['cfg']['nfe_per_image']:.1f}); adherence {rows[name]['adherence']:.3f} vs CFG "
                        f"{rows['cfg']['adherence']:.3f} ({-gap * 100:+.1f} points)"))
    if have("apg_15", "cfg_15"):
        def off(name):
            return abs(rows[name]["mean_chroma"] - dataset["mean_chroma"])
        met = off("apg_15") < off("cfg_15") and rows["apg_15"]["adherence"] >= rows["cfg_15"]["adherence"]
        out.append(("APG at CFG 15: saturation closer to the dataset's than CFG 15, adherence no worse", met,
                    f"chroma APG {rows['apg_15']['mean_chroma']:.3f} / CFG "
                    f"{rows['cfg_15']['mean_chroma']:.3f} / dataset {dataset['mean_chroma']:.3f}; "
                    f"clipped APG {rows['apg_15']['clipped_fraction']:.4f} / CFG "
                    f"{rows['cfg_15']['clipped_fraction']:.4f} / dataset {dataset['clipped_fraction']:.4f}; "
                    f"adherence APG {rows['apg_15']['adherence']:.3f} vs CFG {rows['cfg_15']['adherence']:.3f}"))
    if have("comfy_cfg_1", BASELINE):
        gain = rows[BASELINE]["adherence"] - rows["comfy_cfg_1"]["adherence"]
        out.append(("default model: adherence at CFG 5 well above CFG 1 (>= 20 points)", gain >= 0.20,
                    f"CFG 5 {rows[BASELINE]['adherence']:.3f} vs CFG 1 {rows['comfy_cfg_1']['adherence']:.3f}"))
    if have("comfy_cfg_15"):
        r = rows["comfy_cfg_15"]
        out.append(("default model: saturation at CFG 15 above the dataset's",
                    r["mean_chroma"] > dataset["mean_chroma"]
                    and r["clipped_fraction"] > dataset["clipped_fraction"],
                    f"chroma {r['mean_chroma']:.3f} vs {dataset['mean_chroma']:.3f}, clipped "
                    f"{r['clipped_fraction']:.4f} vs {dataset['clipped_fraction']:.4f}"))
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
        f"{meta['prompts']} held-out prompts x {meta['seeds']} seeds = {meta['images']} images per method, "
        f"{meta['steps']} steps, euler, normal schedule, default model `{meta['weights']}`, "
        f"through ComfyUI {meta['comfyui']} over HTTP on {meta['machine']}, {meta['date']}; the run took "
        f"{meta['wall_seconds']:.0f} s.",
        "† ComfyUI's own guiders are not instrumented: 2 NFE per step by construction (1 at CFG 1).",
        "Time: median over prompts of the server's execution time of the whole graph divided by ComfyUI "
        "CFGGuider's on the same prompt and seeds, in this run. Adherence: shape and colour found by "
        "`quality/shapes.py` match the prompt. Saturation: mean chroma (max - min channel; HSV "
        "saturation, in results.json, is inflated by noise on dark pixels); clipped: share of "
        "channel values at 0 or 255. Diversity: mean pairwise RMSE between the seeds of one prompt. "
        "RMSE/PSNR: against ComfyUI CFG at the same scale and seeds. Scene distance: Fréchet distance "
        f"to {meta['real_count']} real dataset images on standardised scene features "
        f"({', '.join(SCENE_FEATURES)}); see `quality/metrics.py`.",
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


def write_results(out: Path, methods, results: dict, prompts: list, args, real_images, dataset, calibration,
                  wall_seconds: float, timing: dict | None = None) -> str:
    out.mkdir(parents=True, exist_ok=True)
    real_features = scene_features(real_images)
    rows = score(methods, results, prompts, args.seeds, real_features)
    data_row = dataset_row(*dataset, real_features)
    checks = targets(rows, data_row, timing)
    try:
        from comfyui_version import __version__ as comfyui
    except ImportError:
        comfyui = "?"
    meta = {"prompts": len(prompts), "seeds": args.seeds, "images": len(prompts) * args.seeds,
            "steps": args.steps, "weights": "guidance_lab_shapes32.safetensors", "comfyui": comfyui,
            "machine": f"{os.cpu_count()}-core {platform.machine()} CPU", "real_count": len(real_images),
            "wall_seconds": wall_seconds, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "eval_seed": args.eval_seed, "calibration": calibration}
    table = markdown(rows, data_row, checks, meta)
    (out / "results.md").write_text(f"# Guidance benchmark ({meta['date']})\n\n"
                                    "`make benchmark` (benchmarks/guidance_benchmark.py)\n\n" + table)
    (out / "results.json").write_text(json.dumps(
        {"meta": meta, "methods": rows, "dataset": data_row, "prompts": prompts, "overhead_timing": timing,
         "targets": [{"target": n, "met": m, "measured": v} for n, m, v in checks]}, indent=1, default=float))
    write_grids(out, methods, results, prompts, args.grid_prompts)
    return table
