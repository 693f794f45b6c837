"""Draw a run's per-step record as stacked panels with PIL (no plotting library needed).

A record can arrive from any client (the node's input takes a literal through the API),
so ``parse_record`` checks its shape and the plot is capped: at most ``MAX_PANELS`` metric
panels of at most ``MAX_SERIES`` samples each over at most ``MAX_STEPS`` steps, whatever
the record holds (the rest is left out and the title says so). The image is at most
760 x (190 x (MAX_PANELS + 1) + 30) pixels.
"""

from __future__ import annotations

import json
import math
import numbers

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..validation import MAX_STEPS

MAX_RECORD_CHARS = 16 * 1024 * 1024
MAX_PANELS = 8  # metric panels below the NFE panel (the pack's policies record up to 4)
MAX_SERIES = 16  # samples drawn per panel (a batch's first 16)
MAX_VALUES = 4096  # values one metric may hold at one step (one per sample)

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


def _number(value, where: str, finite: bool = True) -> float:
    """A number; with ``finite=False`` NaN, inf and values beyond any axis become NaN (not drawn)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{where} is {repr(value)[:40]}, not a number")
    value = float(value)
    if not (math.isfinite(value) and abs(value) <= 1e15):
        if finite:
            raise ValueError(f"{where} is {value!r}, not a finite number of at most 1e15")
        return math.nan
    return value


def record_json(text, use: str = "plotted"):
    """``text`` (a run record's JSON) parsed, within the size the nodes read; ValueError says
    what is wrong with it."""
    if not isinstance(text, str):
        raise ValueError(f"it is a {type(text).__name__}, not a JSON text")
    if len(text) > MAX_RECORD_CHARS:
        raise ValueError(f"it is {len(text)} characters long; at most {MAX_RECORD_CHARS} are {use}")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:
        raise ValueError(f"it is not JSON ({str(err)[:200]})") from None


def parse_record(text) -> dict:
    """The record in ``text`` (a Guided Sampler's ``record`` JSON), checked; ValueError says
    what is wrong. Returns only what the plot reads, in the types it expects."""
    data = record_json(text)
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list):
        raise ValueError("it is not a Guidance Lab run record (no list of steps)")
    if len(data["steps"]) > MAX_STEPS:
        raise ValueError(f"it has {len(data['steps'])} steps; at most {MAX_STEPS} are plotted")
    steps = []
    for i, s in enumerate(data["steps"]):
        where = f"steps[{i}]"
        if not isinstance(s, dict):
            raise ValueError(f"{where} is not an object")
        metrics = s.get("metrics", {})
        if not isinstance(metrics, dict):
            raise ValueError(f"{where}.metrics is not an object")
        clean = {}
        for name, values in metrics.items():
            values = values if isinstance(values, list) else [values]
            if len(values) > MAX_VALUES:
                raise ValueError(f"{where}.metrics[{name!r}] holds {len(values)} values; at most {MAX_VALUES}")
            clean[str(name)[:60]] = [_number(v, f"{where}.metrics[{name!r}]", finite=False) for v in values]
        steps.append({"nfe": _number(s.get("nfe"), f"{where}.nfe"), "metrics": clean})
    batch = data.get("batch_size", 1)
    decisions = data.get("decisions") if isinstance(data.get("decisions"), dict) else {}
    switches = decisions.get("switch_step") or []
    if not isinstance(switches, list) or not all(v is None or (isinstance(v, int) and not isinstance(v, bool))
                                                   for v in switches):
        raise ValueError("decisions.switch_step is not a list of step numbers")
    settings = data.get("settings") if isinstance(data.get("settings"), dict) else {}
    title = (f"{str(data.get('policy', '?'))[:40]} ({', '.join(f'{k}={v}' for k, v in settings.items())}"[:160]
             + f"): {str(data.get('total_nfe', '?'))[:12]} NFE, {str(data.get('nfe_per_image', '?'))[:12]} per image")
    return {"steps": steps, "batch_size": max(int(_number(batch, "batch_size")), 1),
            "switches": sorted({v for v in switches if v is not None and 0 <= v < len(steps)}), "title": title}


def plot_record(record: dict) -> Image.Image:
    """An image of a record checked by ``parse_record``."""
    steps = record["steps"]
    metrics: dict = {}
    for i, s in enumerate(steps):
        for name, values in s["metrics"].items():
            metrics.setdefault(name, {})[i] = values
    panels = [("nfe", [[s["nfe"] / record["batch_size"] for s in steps]], True)]
    notes = []
    if len(metrics) > MAX_PANELS:
        notes.append(f"{len(metrics) - MAX_PANELS} more metrics not shown")
    for name, by_step in list(metrics.items())[:MAX_PANELS]:
        width = max(len(v) for v in by_step.values())
        if width > MAX_SERIES:
            notes.append(f"{name}: first {MAX_SERIES} of {width} samples")
        series = [[by_step[i][j] if j < len(by_step.get(i, ())) else np.nan for i in range(len(steps))]
                  for j in range(min(width, MAX_SERIES))]
        panels.append((name, series, False))
    image = Image.new("RGB", (WIDTH, PANEL_HEIGHT * len(panels) + 30), BACKGROUND)
    draw = ImageDraw.Draw(image)
    title = record["title"] + (f" [{'; '.join(notes)}]" if notes else "")
    draw.text((MARGIN[0], 8), title, fill=TEXT, font=ImageFont.load_default())
    for k, (name, series, bars) in enumerate(panels):
        _panel(draw, 30 + k * PANEL_HEIGHT, TITLES.get(name, name), steps, series, bars, record["switches"])
    return image


def series_plot(title: str, panel_title: str, values, bars: bool = True) -> Image.Image:
    """One panel of per-index values (e.g. distances between adjacent frames) as an image."""
    image = Image.new("RGB", (WIDTH, PANEL_HEIGHT + 30), BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.text((MARGIN[0], 8), title, fill=TEXT, font=ImageFont.load_default())
    _panel(draw, 30, panel_title, list(range(len(values))), [list(values)], bars)
    return image
