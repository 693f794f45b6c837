"""Is an image inside the support of the default models' training data? The ground truth of
hallucination detection (Aithal et al. 2024: "mode interpolation" makes samples no training
image looks like).

In support means what ``tools.training.dataset`` can draw: one shape of the vocabulary, in one
named colour, on a plain named backdrop. ``support`` answers with the reasons an image is
not, each one a check a hallucination fails:

- ``backdrop``: the border is not one named backdrop, or pixels away from the shape stand out
  from it (a broken, patchy or graded backdrop);
- ``shapes``: more than one blob (two shapes), or none;
- ``colour``: the shape's core is not one colour (two colours, a gradient) or its colour is no
  named colour (a mix of two);
- ``outline``: no shape of the vocabulary, fitted in position, size and rotation, covers the
  blob well (a shape between two shapes, a shape with a bite, two touching shapes).

The outline test fits each shape's clean render (the dataset's own rasteriser) to the blob's
coverage, so it does not depend on the feature thresholds of ``quality.shapes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy import ndimage

from ..training.dataset import COLOURS, SHAPES, Scene, coverage
from .shapes import (_BG_NAMES, _BG_RGB, _FG_LAB, _FG_NAMES, FOREGROUND_DISTANCE, MIN_BLOB_FRACTION,
                     _as_numpy, _srgb_to_lab)

# Thresholds, set on the dataset's renders and the hand-made out-of-support renders of
# tests/core/test_support.py (seeds other than the ones it scores):
# border median farther than this (RGB) from every named backdrop: no named backdrop.
BACKDROP_DISTANCE = 0.12
# Pixels farther than FOREGROUND_DISTANCE from the backdrop, outside the shape, as a fraction
# of the image: a broken backdrop, a second faint shape, a halo.
MAX_STRAY_FRACTION = 0.01
# CIELAB distance of the core's colour from the nearest named colour; the closest named pair
# (blue, purple) is 27 apart, so a colour farther than
# about two thirds of that is a mix (a model at high CFG drifts a few units off the palette).
COLOUR_DELTA_E = 18.0
# 90th percentile of the core pixels' CIELAB distance from the core's median: a shape of two
# colours or a gradient spreads far more (40 and up) than a flat one with pixel noise of 0.03
# (up to ~18 on a thin star, whose eroded core still touches its anti-aliased rim).
CORE_SPREAD_DELTA_E = 22.0
# IoU of the blob's outline with the best-fitting clean shape, per shape: about the 1st
# percentile of the dataset's renders with a model's noise (0.03) and blur (0.7 px) at
# 32x32 (a small star's arms lose the most to pixels; a circle the least).
MIN_OUTLINE_IOU = {"circle": 0.94, "square": 0.925, "triangle": 0.88, "ring": 0.885, "cross": 0.88,
                   "star": 0.82}

_PERIOD = {"circle": 0.0, "ring": 0.0, "square": 90.0, "triangle": 120.0, "star": 72.0, "cross": 90.0}
_ROTATIONS = 24  # candidate rotations per period, refined once around the best
OUTLINE_ZOOM = 4
_REFERENCE = 256  # image side of the renders that measure each shape's area at unit diameter


@dataclass(frozen=True)
class Support:
    in_support: bool
    # Why not (empty when in support): "backdrop", "shapes", "colour", "outline".
    reasons: tuple = ()
    # The measurements the decision was taken on, for reports and threshold setting.
    measures: dict = field(default_factory=dict)


@lru_cache(maxsize=None)
def _area_per_diameter2(shape: str) -> float:
    """Covered area / diameter^2 of a clean shape (its circumscribed circle's diameter)."""
    size = _REFERENCE * 0.8
    scene = Scene(shape, "red", "white", (_REFERENCE / 2, _REFERENCE / 2), size, 0.0, _REFERENCE)
    return float(coverage(scene, 1).sum()) / size ** 2


def _soft_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.minimum(a, b).sum() / max(np.maximum(a, b).sum(), 1e-9))


def _fit(mask: np.ndarray, shape: str, zoom: int) -> float:
    """Best IoU of ``mask`` (the blob's outline, ``zoom`` x the image side) with ``shape`` drawn
    at the blob's centroid, sized to its area, over rotations (then size and rotation refined)."""
    side = mask.shape[0]
    cy, cx = ndimage.center_of_mass(mask)
    centre = (cx + 0.5, cy + 0.5)
    diameter = float(np.sqrt(mask.sum() / _area_per_diameter2(shape)))
    period = _PERIOD[shape]
    inter_union = mask.sum()

    def iou(size, rotation):
        drawn = coverage(Scene(shape, "red", "white", centre, size, rotation, side), 1) > 0.5
        inter = float((drawn & mask).sum())
        return inter / max(float(drawn.sum()) + inter_union - inter, 1.0)

    rotations = [period * k / _ROTATIONS for k in range(_ROTATIONS)] if period else [0.0]
    best_rot = max(rotations, key=lambda r: iou(diameter, r))
    step = period / _ROTATIONS / 2
    candidates = [(diameter * s, best_rot + d) for s in (0.96, 1.0, 1.04)
                  for d in ((-step, 0.0, step) if period else (0.0,))]
    return max(iou(s, r) for s, r in candidates)


def _coverage_alpha(img, bg, fg, blob) -> np.ndarray:
    axis = fg - bg
    alpha = np.clip((img - bg) @ axis / max(float(axis @ axis), 1e-9), 0, 1)
    return np.where(ndimage.binary_dilation(blob, np.ones((3, 3)), iterations=2), alpha, 0.0)


def support(image) -> Support:
    """Whether one RGB image (H, W, 3) in [0, 1] is one named shape, in one named colour, on a
    plain named backdrop; the reasons when it is not."""
    img = np.clip(np.asarray(image, np.float64), 0, 1)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {img.shape}")
    reasons, measures = [], {}
    border = np.concatenate([img[0], img[-1], img[1:-1, 0], img[1:-1, -1]])
    bg = np.median(border, 0)
    bg_distance = float(np.min(np.linalg.norm(_BG_RGB - bg, axis=1)))
    measures["backdrop_distance"] = bg_distance
    if bg_distance > BACKDROP_DISTANCE:
        reasons.append("backdrop")

    dist = np.linalg.norm(img - bg, axis=-1)
    labels, n = ndimage.label(dist > FOREGROUND_DISTANCE, structure=np.ones((3, 3)))
    sizes = np.bincount(labels.ravel())[1:] if n else np.zeros(0, int)
    blobs = int((sizes >= MIN_BLOB_FRACTION * dist.size).sum())
    measures["blobs"] = blobs
    if blobs != 1:
        reasons.append("shapes")
        if blobs == 0:
            return Support(False, tuple(reasons), measures)
    blob = labels == int(np.argmax(sizes)) + 1
    # Stray: off-backdrop pixels neither in the blob nor on its anti-aliased rim.
    near = ndimage.binary_dilation(blob, np.ones((3, 3)), iterations=2)
    stray = float(((dist > FOREGROUND_DISTANCE) & ~near).mean())
    measures["stray_fraction"] = stray
    if stray > MAX_STRAY_FRACTION and "shapes" not in reasons:
        reasons.append("backdrop")

    core = ndimage.binary_erosion(blob, np.ones((3, 3)))
    if core.sum() < 4:
        core = blob
    # A 3x3 median keeps a two-colour split and drops a model's pixel noise.
    smooth = ndimage.median_filter(img, size=(3, 3, 1))
    core_lab = _srgb_to_lab(smooth[core])
    fg = np.median(img[core], 0)
    fg_lab = _srgb_to_lab(fg)
    colour_distance = float(np.min(np.linalg.norm(_FG_LAB - fg_lab, axis=1)))
    spread = float(np.percentile(np.linalg.norm(core_lab - fg_lab, axis=1), 90))
    measures.update(colour_distance=colour_distance, core_spread=spread,
                    colour=_FG_NAMES[int(np.argmin(np.linalg.norm(_FG_LAB - fg_lab, axis=1)))])
    if colour_distance > COLOUR_DELTA_E or spread > CORE_SPREAD_DELTA_E:
        reasons.append("colour")

    # The outline at OUTLINE_ZOOM x: the half-coverage contour of the blob, which a soft edge
    # or a model's blur leaves where it is.
    alpha = _coverage_alpha(img, bg, fg, blob)
    mask = ndimage.zoom(alpha, OUTLINE_ZOOM, order=1) > 0.5
    fits = {shape: _fit(mask, shape, OUTLINE_ZOOM) for shape in SHAPES}
    best = max(fits, key=lambda shape: fits[shape] - MIN_OUTLINE_IOU[shape])
    measures.update(shape=best, outline_iou=fits[best], outline_margin=fits[best] - MIN_OUTLINE_IOU[best])
    if fits[best] < MIN_OUTLINE_IOU[best]:
        reasons.append("outline")
    return Support(not reasons, tuple(dict.fromkeys(reasons)), measures)


def support_batch(images) -> list:
    """``support`` for every image of a batch (N, H, W, 3), numpy or torch (ComfyUI's IMAGE)."""
    return [support(im) for im in _as_numpy(images)]


def in_support(images) -> np.ndarray:
    """(N,) booleans: which images of a batch are in the training data's support."""
    return np.array([s.in_support for s in support_batch(images)], bool)


assert set(_PERIOD) == set(SHAPES) and len(COLOURS) == len(_FG_NAMES)
