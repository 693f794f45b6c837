"""The hallucination score of a run's record (guiders/trajectory_variance.py) for the nodes:
read it from the record JSON, split a batch by it, draw it (PIL, like record_plot.py)."""

from __future__ import annotations

import math
import numbers

from PIL import Image, ImageDraw, ImageFont

from .record_plot import MAX_VALUES, record_json

WIDTH, HEIGHT, LEFT, TOP, RIGHT, BOTTOM = 760, 260, 64, 40, 16, 34
BACKGROUND, AXIS, GRID, TEXT = (24, 24, 28), (150, 150, 160), (55, 55, 62), (225, 225, 230)
KEPT, FLAGGED, LINE = (120, 220, 120), (240, 110, 110), (255, 170, 60)


def record_scores(text) -> tuple:
    """(per-sample scores, the record's ``hallucination`` block) of a run record's JSON text;
    ValueError says what is missing."""
    data = record_json(text, use="read")
    block = data.get("hallucination") if isinstance(data, dict) else None
    if not isinstance(block, dict):
        raise ValueError("it holds no hallucination score: connect the 'record' output of a Guided Sampler "
                         "or a Guidance Report (Guidance Lab) of this run")
    scores = block.get("score")
    if scores is None:
        raise ValueError(f"it holds no hallucination score: the run made {block.get('estimates', 0)} denoised "
                         f"estimates at noise level <= {block.get('window_noise_level')} and the score "
                         f"needs two; sample with more steps")
    if not isinstance(scores, list) or not scores or len(scores) > MAX_VALUES:
        raise ValueError(f"it has a hallucination score that is not a list of 1 to {MAX_VALUES} numbers")
    clean = []
    for i, v in enumerate(scores):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ValueError(f"it has hallucination score {i} = {repr(v)[:40]}, not a finite number")
        clean.append(float(v))
    return clean, block


def score_plot(scores, threshold, kept, title: str) -> Image.Image:
    """Bars of per-sample scores (green kept, red flagged) and the threshold as a line."""
    image = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text((LEFT, 8), title[:120], fill=TEXT, font=font)
    draw.text((LEFT, 20), "hallucination score (trajectory variance) per sample; green kept, red flagged",
              fill=AXIS, font=font)
    top = max([*scores, threshold if threshold is not None and math.isfinite(threshold) else 0.0, 1e-12])
    y0, y1, x0, x1 = TOP, HEIGHT - BOTTOM, LEFT, WIDTH - RIGHT

    def y_at(v):
        return y1 - (y1 - y0) * min(max(v / top, 0.0), 1.0)

    for frac in (0.0, 0.5, 1.0):
        draw.line([(x0, y_at(frac * top)), (x1, y_at(frac * top))], fill=GRID)
        draw.text((4, y_at(frac * top) - 6), f"{frac * top:.3g}", fill=AXIS, font=font)
    n = max(len(scores), 1)
    width = (x1 - x0) / n
    for i, (v, keep) in enumerate(zip(scores, kept)):
        left = x0 + i * width
        draw.rectangle([left + 0.15 * width, y_at(v), left + max(0.85 * width, 0.15 * width + 1), y1],
                       fill=KEPT if keep else FLAGGED)
    for i in range(0, n, max(1, n // 16)):
        draw.text((x0 + (i + 0.3) * width, y1 + 4), str(i), fill=AXIS, font=font)
    if threshold is not None and math.isfinite(threshold):
        draw.line([(x0, y_at(threshold)), (x1, y_at(threshold))], fill=LINE, width=2)
    return image
