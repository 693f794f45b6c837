"""Draw a run's per-step record as stacked panels with PIL (no plotting library needed)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

WIDTH, PANEL_HEIGHT, MARGIN = 760, 190, (58, 26, 16, 34)  # left, top, right, bottom
BACKGROUND, AXIS, GRID, TEXT, SWITCH = (24, 24, 28), (150, 150, 160), (55, 55, 62), (225, 225, 230), (255, 170, 60)
SERIES = [(90, 170, 255), (120, 220, 120), (240, 110, 110), (220, 180, 255), (255, 220, 90), (90, 220, 220)]
TITLES = {"nfe": "NFE per image", "cosine": "AG agreement gamma_t per sample (space in the report)",
          "guidance_norm": "guidance norm per sample", "cond_only": "conditional-only per sample"}


def _panel(draw, top, title, steps, series, bars=False, marks=()):
    left, right = MARGIN[0], WIDTH - MARGIN[2]
    y0, y1 = top + MARGIN[1], top + PANEL_HEIGHT - MARGIN[3]
    values = np.concatenate([np.asarray(s, dtype=float) for s in series]) if series else np.zeros(1)
    values = values[np.isfinite(values)] if np.isfinite(values).any() else np.zeros(1)
    lo, hi = (0.0, float(values.max())) if bars else (float(values.min()), float(values.max()))
    if hi - lo < 1e-3 * max(abs(hi), 1.0):  # a flat series: give it room instead of noise-sized ticks
        pad = max(0.5, 0.05 * abs(hi))
        lo, hi = (lo if bars else lo - pad), hi + pad
    n = max(len(steps), 1)

    def x_at(i):
        return left + (right - left) * (i + 0.5) / n

    def y_at(v):
        return y1 - (y1 - y0) * (v - lo) / (hi - lo)

    font = ImageFont.load_default()
    draw.text((left, top + 6), title, fill=TEXT, font=font)
    for frac in (0.0, 0.5, 1.0):
        v = lo + frac * (hi - lo)
        draw.line([(left, y_at(v)), (right, y_at(v))], fill=GRID)
        draw.text((4, y_at(v) - 6), f"{v:.4g}", fill=AXIS, font=font)
    draw.line([(left, y1), (right, y1)], fill=AXIS)
    for i in range(0, n, max(1, n // 10)):
        draw.text((x_at(i) - 4, y1 + 4), str(i), fill=AXIS, font=font)
    for step in marks:
        draw.line([(x_at(step), y0), (x_at(step), y1)], fill=SWITCH, width=2)
    for k, s in enumerate(series):
        colour = SERIES[k % len(SERIES)]
        pts = [(x_at(i), y_at(v)) for i, v in enumerate(s) if np.isfinite(v)]
        if bars:
            w = max(2, (right - left) / n * 0.6)
            for x, y in pts:
                draw.rectangle([x - w / 2, y, x + w / 2, y1], fill=colour)
        elif len(pts) > 1:
            draw.line(pts, fill=colour, width=2)
        for x, y in pts if not bars else ():
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)


def plot_record(record: dict) -> Image.Image:
    """An image of a record as produced by ``GuidanceRecord.to_dict()``."""
    steps = record.get("steps", [])
    metrics: dict = {}
    for s in steps:
        for name, values in s.get("metrics", {}).items():
            metrics.setdefault(name, {})[s["step"]] = values
    panels = [("nfe", [[s["nfe"] / max(record.get("batch_size", 1), 1) for s in steps]], True)]
    for name, by_step in metrics.items():
        width = max(len(v) for v in by_step.values())
        series = [[(by_step.get(i) or [np.nan] * width)[j] if j < len(by_step.get(i) or []) else np.nan
                   for i in range(len(steps))] for j in range(width)]
        panels.append((name, series, False))
    switches = [s for s in record.get("decisions", {}).get("switch_step", []) if s is not None and s >= 0]
    image = Image.new("RGB", (WIDTH, PANEL_HEIGHT * len(panels) + 30), BACKGROUND)
    draw = ImageDraw.Draw(image)
    settings = ", ".join(f"{k}={v}" for k, v in record.get("settings", {}).items())
    draw.text((MARGIN[0], 8), f"{record.get('policy', '?')} ({settings}): {record.get('total_nfe', '?')} NFE, "
              f"{record.get('nfe_per_image', 0):g} per image", fill=TEXT, font=ImageFont.load_default())
    for k, (name, series, bars) in enumerate(panels):
        _panel(draw, 30 + k * PANEL_HEIGHT, TITLES.get(name, name), steps, series, bars, sorted(set(switches)))
    return image
