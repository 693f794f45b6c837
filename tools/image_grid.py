"""Labelled PNG grids of small images (rows x columns), for the README and the benchmark."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def image_grid(path: Path, tiles, row_labels, column_labels, scale: int = 3, label_width: int = 250) -> Path:
    """Save ``tiles[r][c]`` (H, W, 3 arrays in [0, 1]) as one PNG, upscaled ``scale`` times with
    nearest neighbours so that pixels stay pixels, a label per row and a heading per column."""
    first = np.asarray(tiles[0][0])
    cell_h, cell_w = first.shape[0] * scale, first.shape[1] * scale
    head_h = 18 * (1 + max(str(c).count("\n") for c in column_labels))
    grid = Image.new("RGB", (label_width + cell_w * len(column_labels), head_h + cell_h * len(row_labels)),
                     (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for j, label in enumerate(column_labels):
        draw.multiline_text((label_width + j * cell_w + 4, 3), str(label), fill=(0, 0, 0))
    for i, label in enumerate(row_labels):
        draw.text((4, head_h + i * cell_h + cell_h // 2 - 6), str(label), fill=(0, 0, 0))
        for j in range(len(column_labels)):
            pixels = (np.clip(np.asarray(tiles[i][j], np.float64), 0, 1) * 255).round().astype(np.uint8)
            tile = Image.fromarray(pixels).resize((cell_w, cell_h), Image.NEAREST)
            grid.paste(tile, (label_width + j * cell_w, head_h + i * cell_h))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def load_images(paths) -> np.ndarray:
    """(N, H, W, 3) float32 array in [0, 1] from image files (e.g. a ComfyUI run's PNGs)."""
    return np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32) / 255.0 for p in paths])
