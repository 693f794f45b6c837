"""The NFE-vs-adherence trade-off of one benchmark run, drawn with PIL from its results.json:
every method a point at its NFE per image and adherence, with its 95% Wilson interval.

    .host/venv/bin/python -m tools.benchmark.plot docs/benchmark/guidance_lab_flow32   # writes tradeoff.png there

The benchmark draws it after every run (report.write_tables), and so does
``guidance_benchmark --regenerate``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from . import stats

WIDTH, HEIGHT = 1000, 640
LEFT, TOP, RIGHT, BOTTOM = 70, 58, 250, 56  # plot margins; the legend sits in the right one
BACKGROUND, AXIS, GRID, TEXT = (255, 255, 255), (90, 90, 90), (228, 228, 228), (20, 20, 20)
# Method families, in legend order: (label, colour, row names).
FAMILIES = [
    ("CFG (ComfyUI and the pack)", (40, 40, 40),
     ("comfy_cfg_1", "comfy_cfg", "cfg", "comfy_ksampler", "ksampler_patch", "comfy_cfg_3", "comfy_cfg_15", "cfg_15")),
    ("fixed CFG-then-prompt switch", (150, 150, 150), ("switch_50", "switch_20")),
    ("Adaptive Guidance", (30, 110, 210), ("ag", "ag_eps", "ag_apg_15")),
    ("LinearAG", (20, 150, 70), ("linear_ag",)),
    ("APG", (140, 70, 180), ("apg", "apg_15", "comfy_apg_15")),
    ("CFG++", (0, 160, 170), ("cfg_pp",)),
    ("AGD", (215, 60, 40), ("agd", "agd_3")),
]
OTHER = (200, 140, 0)


def colour_of(name: str) -> tuple:
    return next((c for _, c, names in FAMILIES if name in names), OTHER)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the bitmap font, one size
        return ImageFont.load_default()


def points(stored: dict) -> list:
    """One point per group of rows at the same NFE and adherence (identical rows share a label):
    (names, nfe, adherence, lo, hi)."""
    images = stored["meta"]["images"]
    groups = {}
    for name, row in stored["methods"].items():
        if row.get("adherence") is None or row.get("nfe_per_image") is None:
            continue
        lo, hi = row.get("adherence_ci") or stats.wilson_of_share(row["adherence"], images)
        key = (round(row["nfe_per_image"], 2), round(row["adherence"], 4))
        groups.setdefault(key, [[], row["nfe_per_image"], row["adherence"], lo, hi])[0].append(name)
    return [tuple(g) for g in groups.values()]


def _overlaps(box, boxes) -> bool:
    return any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in boxes)


def tradeoff_plot(stored: dict, path: Path) -> Path:
    pts = points(stored)
    meta = stored["meta"]
    image = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(image)
    small, font, title_font = _font(11), _font(13), _font(15)
    x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, TOP, HEIGHT - BOTTOM
    nfes = [p[1] for p in pts] or [0.0]
    lows = [p[3] for p in pts] or [0.0]
    n_lo, n_hi = max(0.0, 5 * int(min(nfes) / 5) - 5), 5 * int(max(nfes) / 5 + 1) + 10
    a_lo, a_hi = max(0.0, int(min(lows) * 20) / 20 - 0.05), 1.0

    def x_at(v):
        return x0 + (x1 - x0) * (v - n_lo) / (n_hi - n_lo)

    def y_at(v):
        return y1 - (y1 - y0) * (v - a_lo) / (a_hi - a_lo)

    model = Path(meta["weights"]).stem
    draw.text((x0, 10), f"{model}: NFE per image against adherence", fill=TEXT, font=title_font)
    draw.text((x0, 32), f"{meta['images']} images per method ({meta['prompts']} prompts x {meta['seeds']} seeds), "
                        f"{meta['steps']} steps; bars: 95% Wilson intervals; run {meta['date']}",
              fill=AXIS, font=small)
    step = 0.05 if a_hi - a_lo <= 0.6 else 0.1
    v = a_lo
    while v <= a_hi + 1e-9:
        draw.line([(x0, y_at(v)), (x1, y_at(v))], fill=GRID)
        draw.text((x0 - 40, y_at(v) - 7), f"{v:.2f}", fill=AXIS, font=small)
        v = round(v + step, 6)
    tick = 5 if n_hi - n_lo <= 50 else 10
    v = tick * int(n_lo / tick + 0.999)
    while v <= n_hi:
        draw.line([(x_at(v), y0), (x_at(v), y1)], fill=GRID)
        draw.text((x_at(v) - 6, y1 + 6), f"{v:g}", fill=AXIS, font=small)
        v += tick
    draw.rectangle([x0, y0, x1, y1], outline=AXIS)
    draw.text(((x0 + x1) / 2 - 110, y1 + 26), "model evaluations (NFE) per image", fill=TEXT, font=font)
    draw.text((6, y0 - 20), "adherence", fill=TEXT, font=font)

    # Points at the same NFE spread sideways a little, so that their bars stay apart.
    by_nfe = {}
    for p in sorted(pts, key=lambda p: p[2]):
        by_nfe.setdefault(round(p[1], 2), []).append(p)
    placed, boxes = [], [(x0 - 45, y0, x1 + 5, y0 + 1)]
    for group in by_nfe.values():
        for k, (names, nfe, adherence, lo, hi) in enumerate(group):
            dx = (k - (len(group) - 1) / 2) * 7
            placed.append((names, x_at(nfe) + dx, y_at(adherence), y_at(lo), y_at(hi)))
    for names, x, y, ylo, yhi in placed:
        colour = colour_of(names[0])
        draw.line([(x, ylo), (x, yhi)], fill=colour, width=2)
        draw.line([(x - 4, ylo), (x + 4, ylo)], fill=colour, width=2)
        draw.line([(x - 4, yhi), (x + 4, yhi)], fill=colour, width=2)
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour, outline=TEXT)
        boxes.append((x - 5, yhi - 1, x + 5, ylo + 1))
    for names, x, y, _, _ in sorted(placed, key=lambda p: p[2]):
        # Identical rows share a point: their names, two to a line.
        label = "\n".join(" = ".join(names[i:i + 2]) + (" =" if i + 2 < len(names) else "")
                          for i in range(0, len(names), 2))
        w, h = draw.multiline_textbbox((0, 0), label, font=small, spacing=1)[2:]
        candidates = [(x + 9, y - h / 2), (x - 9 - w, y - h / 2)]
        candidates += [(x + 9, y - h / 2 + d) for d in (-14, 14, -28, 28, -42, 42, -56, 56, 70, 84)]
        candidates += [(x - 9 - w, y - h / 2 + d) for d in (-14, 14, -28, 28, -42, 42, -56, 56, 70, 84)]
        for cx, cy in candidates:
            box = (cx - 1, cy - 1, cx + w + 1, cy + h + 1)
            if x0 <= box[0] and box[2] <= x1 - 2 and y0 <= box[1] and box[3] <= y1 and not _overlaps(box, boxes):
                break
        else:  # nowhere free: the first place inside the plot
            cx, cy = next(((cx, cy) for cx, cy in candidates if x0 <= cx and cx + w <= x1 - 2), candidates[0])
            box = (cx - 1, cy - 1, cx + w + 1, cy + h + 1)
        if abs(cy + h / 2 - y) > 8:
            draw.line([(x, y), (cx if cx > x else cx + w, cy + h / 2)], fill=GRID, width=1)
        draw.multiline_text((cx, cy), label, fill=colour_of(names[0]), font=small, spacing=1)
        boxes.append(box)

    lx, ly = x1 + 16, y0 + 8
    present = {n for p in pts for n in p[0]}
    for label, colour, names in FAMILIES:
        if present & set(names):
            draw.ellipse([lx, ly + 3, lx + 8, ly + 11], fill=colour)
            draw.text((lx + 14, ly), label, fill=TEXT, font=small)
            ly += 18
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, optimize=True)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+", help="benchmark results folders (with results.json)")
    args = parser.parse_args(argv)
    for folder in args.results:
        print(tradeoff_plot(json.loads((folder / "results.json").read_text()), folder / "tradeoff.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
