"""Score the benchmark's images and write results.json, results.md and the PNG grids."""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import time
from pathlib import Path

import numpy as np

from ..image_grid import image_grid
from ..quality.metrics import SCENE_FEATURES, distance_to_reference, diversity, scene_distance, scene_features
from ..quality.shapes import analyse_batch, label_accuracy, saturation_stats
from ..training.dataset import parse_prompt
from . import stats
from .methods import BASELINE, CFG, METHODS, is_tuned

COLUMNS = [  # (key, heading, format)
    ("nfe_per_image", "NFE / image", "{:.1f}"),
    ("time_ratio", "time vs ComfyUI CFG", "{:.3f}"),
    ("adherence", "adherence (95% CI)", "{:.3f}"),
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


def per_image_scores(images: np.ndarray, prompts: list, seeds: int) -> dict:
    """Each image's 0/1 adherence (shape and colour match its prompt, as ``label_accuracy``
    reads it), chroma and clipped share, as lists per scored prompt (its seeds inside), so that
    two rows on the same prompts and seeds can be compared image by image."""
    found = analyse_batch(images)
    wanted = [parse_prompt(p) for p in prompts for _ in range(seeds)]
    hits = [int(a.shape == w[0] and a.colour == w[1]) for a, w in zip(found, wanted)]
    x = np.asarray(images, np.float64)
    levels = np.rint(x * 255)
    clipped = ((levels <= 0) | (levels >= 255)).reshape(len(x), -1).mean(axis=1)
    chroma = (x.max(-1) - x.min(-1)).reshape(len(x), -1).mean(axis=1)

    def by_prompt(values):
        return [list(values[i * seeds:(i + 1) * seeds]) for i in range(len(prompts))]
    return {"adherence": by_prompt(hits), "chroma": by_prompt([round(float(v), 5) for v in chroma]),
            "clipped": by_prompt([round(float(v), 5) for v in clipped])}


def add_intervals(row: dict, images: int) -> dict:
    """The row's 95% interval of adherence: Wilson, from its per-image scores when stored, else
    from the stored share over ``images`` (results from before per-image scores were kept)."""
    if "adherence" not in row:
        return row
    per_image = row.get("per_image")
    if per_image:
        hits = [h for group in per_image["adherence"] for h in group]
        row["adherence_ci"] = list(stats.wilson(sum(hits), len(hits)))
    else:
        row["adherence_ci"] = list(stats.wilson_of_share(row["adherence"], images))
    return row


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
        row["per_image"] = per_image_scores(images, prompts, seeds)
        rows[method.name] = add_intervals(row, len(images))
    return rows


def dataset_row(images, prompts, real_features) -> dict:
    row = {"label": "dataset (real images, other seeds)", **label_accuracy(images, prompts),
           **saturation_stats(images), "scene_distance": scene_distance(images, real_features)}
    return add_intervals(row, len(images))


def targets(rows: dict, dataset: dict, timing: dict | None = None) -> list:
    """Every row's own target (``Method.target``), each (description, verdict, numbers); the
    verdict is one of ``stats.VERDICTS``."""
    out = []
    for method in METHODS:
        if method.target is not None and method.name in rows:
            verdict = method.target(method.name, rows, dataset, timing)
            if verdict is not None:
                out.append(verdict)
    return out


def verdict_cell(verdict: str) -> str:
    return verdict if verdict == stats.MET else f"**{verdict}**"


def markdown(rows: dict, dataset: dict, checks: list, meta: dict) -> str:
    def cell(row, key, fmt):
        value = row.get(key)
        if value is None:
            return "–"
        text = fmt.format(value)
        if key == "adherence" and row.get("adherence_ci"):
            text += f" ({stats.fmt_interval(*row['adherence_ci'])})"
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
        ("AG and LinearAG settings for this model (tools/benchmark/tune.py, on prompts and seeds not scored "
         "here): " if is_tuned(meta["weights"]) else "AG and LinearAG settings: the defaults (not tuned on this "
         "model yet): ") + f"AG {json.dumps(meta['settings'].get('ag'))}, LinearAG "
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
        "Intervals: adherence is 0/1 per image, and its 95% interval is Wilson's over the row's "
        f"{meta['images']} images. A target \"within N points of\" (or \"N points above\") another row is "
        "judged on the paired difference, image by image on the same prompts and seeds, with a 95% "
        f"bootstrap interval ({stats.BOOTSTRAP_RESAMPLES} resamples of the scored prompts, whose seeds stay "
        "together): met when the whole interval meets the bound, not met when none of it does, undecided "
        "at this sample size otherwise. A part measured without sampling error (NFE, the paired timing "
        "medians) is judged on its value; a target is met when every part is, not met when one is not."
        + ("" if meta.get("per_image_scores", True) else
           " These results were measured before per-image scores were stored: their adherence intervals "
           "come from the stored shares, and an adherence part cannot be judged on paired differences "
           "until the benchmark is re-run."),
        "",
        "| target | verdict | measured |", "|---|---|---|",
        *[f"| {name} | {verdict_cell(verdict)} | {numbers} |" for name, verdict, numbers in checks],
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
    """The source and every inversion's edit of the first pairs, side by side."""
    from .inversion import LABELS

    shown, methods = inversion["rows"][:rows], inversion.get("methods") or ["edict", "ddim"]
    tiles = [[r["images"]["source"]] + [r["images"][m] for m in methods] for r in shown]
    labels = [f"{r['pair']['source']} -> {r['pair']['edit'].split(' on ')[0]}" for r in shown]
    return image_grid(out / "inversion.png", tiles, labels,
                      ["source"] + [f"{LABELS[m].removesuffix(' inversion')} edit" for m in methods], label_width=420)


def store_inversion(out: Path, inversion: dict) -> dict:
    """Writes the inversion section's picture; returns the section as results.json keeps it (no images)."""
    write_inversion(out, inversion)
    return {k: v for k, v in inversion.items() if k != "rows"} | {
        "rows": [{k: v for k, v in r.items() if k != "images"} for r in inversion["rows"]]}


def write_results(out: Path, methods, results: dict, prompts: list, args, real_images, dataset, calibration,
                  wall_seconds: float, timing: dict | None = None, inversion: dict | None = None,
                  settings: dict | None = None) -> str:
    out.mkdir(parents=True, exist_ok=True)
    real_features = scene_features(real_images)
    rows = score(methods, results, prompts, args.seeds, real_features)
    data_row = dataset_row(*dataset, real_features)
    try:
        from comfyui_version import __version__ as comfyui
    except ImportError:
        comfyui = "?"
    meta = {"prompts": len(prompts), "distinct_prompts": len(set(prompts)), "seeds": args.seeds,
            "images": len(prompts) * args.seeds,
            "steps": args.steps, "weights": args.weights, "comfyui": comfyui,
            "machine": f"{os.cpu_count()}-core {platform.machine()} CPU", "real_count": len(real_images),
            "wall_seconds": wall_seconds, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "eval_seed": args.eval_seed, "calibration": calibration, "settings": settings or {},
            "excluded_prompts": getattr(args, "excluded_prompts", []), "per_image_scores": True}
    if inversion:
        inversion = store_inversion(out, inversion)
    stored = {"meta": meta, "methods": rows, "dataset": data_row, "prompts": prompts, "overhead_timing": timing,
              "inversion": inversion}
    write_grids(out, methods, results, prompts, args.grid_prompts)
    return write_tables(out, stored)


def compact_json(data) -> str:
    """JSON with one line per list of numbers (the per-image scores stay readable in a diff)."""
    text = json.dumps(data, indent=1, default=float)
    return re.sub(r"\[\s*([-+0-9.eE,\s]+?)\s*\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)


def write_tables(out: Path, stored: dict) -> str:
    """Judge the targets of stored results (``results.json``'s content) and write results.md,
    results.json with the verdicts, and the trade-off plot; returns the Markdown tables."""
    from . import inversion as inv
    from .plot import tradeoff_plot

    meta, rows, data_row = stored["meta"], stored["methods"], stored["dataset"]
    meta.setdefault("per_image_scores", all("per_image" in r for r in rows.values()))
    for row in rows.values():
        add_intervals(row, meta["images"])
    add_intervals(data_row, meta["images"])
    inversion, timing = stored.get("inversion"), stored.get("overhead_timing")
    checks = targets(rows, data_row, timing) + (inv.targets(inversion) if inversion else [])
    table = markdown(rows, data_row, checks, meta)
    if inversion:
        table += "\n" + inv.markdown(inversion, meta["weights"]) + "\n"
    (out / "results.md").write_text(f"# Guidance benchmark ({meta['date']})\n\n"
                                    "`make benchmark` (tools/benchmark/guidance_benchmark.py)\n\n" + table)
    stored["targets"] = [{"target": n, "verdict": v, "met": v == stats.MET, "measured": m} for n, v, m in checks]
    (out / "results.json").write_text(compact_json(stored))
    tradeoff_plot(stored, out / "tradeoff.png")
    return table


def regenerate(out: Path) -> str:
    """The tables, verdicts and plot of the results stored in ``out``, without running anything."""
    return write_tables(out, json.loads((out / "results.json").read_text()))


SUMMARY_MARKERS = ("<!-- benchmark:summary:start -->", "<!-- benchmark:summary:end -->")


def summary_table(results_root: Path) -> str:
    """The README's results summary: every target's verdict on every default model whose
    results are stored under ``results_root`` (one column per model), and the stored run's size."""
    stored = {folder.name: json.loads((folder / "results.json").read_text())
              for folder in sorted(results_root.iterdir()) if (folder / "results.json").is_file()}
    names = []
    for data in stored.values():
        names += [t["target"] for t in data.get("targets", []) if t["target"] not in names]
    verdicts = {model: {t["target"]: t.get("verdict", stats.MET if t["met"] else stats.NOT_MET)
                        for t in data.get("targets", [])} for model, data in stored.items()}
    lines = ["| target | " + " | ".join(f"`{m}`" for m in stored) + " |", "|---|" + "---|" * len(stored)]
    for name in names:
        cells = [verdict_cell(verdicts[m][name]) if name in verdicts[m] else "–" for m in stored]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    runs = "; ".join(f"`{m}`: {d['meta']['images']} images per method, {d['meta']['date']}" for m, d in stored.items())
    return "\n".join(lines) + f"\n\nGenerated from `docs/benchmark/<model>/results.json` ({runs}).\n"


def replace_between(text: str, markers: tuple, body: str) -> str:
    start, end = text.find(markers[0]), text.find(markers[1])
    if start < 0 or end < start:
        raise ValueError(f"the page lacks the markers {markers[0]} / {markers[1]}")
    return text[:start + len(markers[0])] + "\n" + body + text[end:]
