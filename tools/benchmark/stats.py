"""The benchmark's statistics: 95% intervals for its 0/1 per-image figures and verdicts on paired
differences (standard library and numpy only, so the core tests run them without a host).

- ``wilson``: the Wilson score interval of a proportion (adherence over N images, edits that land
  over N pairs). Unlike the normal approximation it stays inside [0, 1] and is not zero-width at
  0 % or 100 %.
- ``paired_bootstrap``: the interval of the mean paired difference of two rows scored on the same
  prompts and seeds, by a bootstrap over the scored prompts (the images of one prompt share its
  batch and noise seed, so a prompt, not an image, is the unit that is resampled).
- ``judge`` turns an interval and a bound into "met", "not met" or "undecided at this sample size";
  ``combine`` joins the verdicts of a target's parts.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # fixed: the same stored scores always give the same interval

MET, NOT_MET, UNDECIDED = "met", "not met", "undecided at this sample size"
RERUN = "needs a re-run"  # stored results without per-image scores: the paired interval cannot be computed
VERDICTS = (MET, NOT_MET, UNDECIDED, RERUN)


def wilson(successes: float, n: int, z: float = Z95) -> tuple:
    """The Wilson score interval (lo, hi) of ``successes`` out of ``n``; (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def wilson_of_share(share: float, n: int) -> tuple:
    """``wilson`` from a stored proportion over ``n`` (older results keep only the share)."""
    return wilson(round(share * n), n)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], groups: Optional[Sequence] = None,
                     resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED, level: float = 0.95) -> dict:
    """Mean of ``a - b`` over paired items and its percentile bootstrap interval.

    ``groups`` (one label per item, e.g. the scored prompt's index) makes it a cluster bootstrap:
    whole groups are resampled with replacement. Without it each item is its own group."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired scores must be two equal-length non-empty lists, got {a.shape} and {b.shape}")
    diff = a - b
    labels = np.arange(len(diff)) if groups is None else np.asarray(groups)
    if len(labels) != len(diff):
        raise ValueError(f"{len(labels)} group labels for {len(diff)} paired scores")
    _, index = np.unique(labels, return_inverse=True)
    sums = np.bincount(index, weights=diff)
    counts = np.bincount(index).astype(np.float64)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(sums), size=(resamples, len(sums)))
    means = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    tail = (1 - level) / 2
    lo, hi = np.quantile(means, [tail, 1 - tail])
    return {"mean": float(diff.mean()), "lo": float(lo), "hi": float(hi), "n": int(len(diff)),
            "groups": int(len(sums)), "resamples": resamples, "level": level}


def judge_at_most(lo: float, hi: float, bound: float, eps: float = 1e-12) -> str:
    """Is the quantity at most ``bound``? Met when the whole interval is, not met when none of it is."""
    if hi <= bound + eps:
        return MET
    if lo > bound + eps:
        return NOT_MET
    return UNDECIDED


def judge_at_least(lo: float, hi: float, bound: float, eps: float = 1e-12) -> str:
    """Is the quantity at least ``bound``?"""
    if lo >= bound - eps:
        return MET
    if hi < bound - eps:
        return NOT_MET
    return UNDECIDED


def exact(ok: bool) -> str:
    """The verdict of a part measured without sampling error worth an interval (NFE counts, a
    timing target judged on its paired median)."""
    return MET if ok else NOT_MET


def combine(*verdicts: str) -> str:
    """All parts met: met; any part not met: not met; otherwise the first open part's verdict."""
    if any(v == NOT_MET for v in verdicts):
        return NOT_MET
    if all(v == MET for v in verdicts):
        return MET
    return RERUN if RERUN in verdicts else UNDECIDED


def fmt_interval(lo: float, hi: float, digits: int = 3) -> str:
    return f"{lo:.{digits}f}-{hi:.{digits}f}"


def fmt_points(interval: dict) -> str:
    """A paired difference in percentage points with its interval, e.g. "-3.1 points (95% CI -6.8 to +0.5)"."""
    return (f"{interval['mean'] * 100:+.1f} points (95% CI {interval['lo'] * 100:+.1f} to "
            f"{interval['hi'] * 100:+.1f}, {interval['groups']} prompts paired)")
