"""Benchmark targets, each attached to the row of the method it judges (``Method.target``).

A target is a callable ``(name, rows, dataset, timing) -> (description, verdict, numbers)`` or
None when the rows it needs are missing from the run. The verdict is one of ``stats.VERDICTS``:
an adherence bound against another row is judged on the paired per-image difference and its
bootstrap interval (``adherence_difference``), so a gap of one or two images reads "undecided
at this sample size" rather than "met" or "not met".
"""

from __future__ import annotations

import statistics
from typing import Callable, Optional

from . import stats

Target = Callable[[str, dict, dict, Optional[dict]], Optional[tuple]]


def overhead_us_per_evaluation(timing: dict) -> Optional[float]:
    """The overhead per model evaluation, from the same estimator as the percentage (the median
    pair ratio), so the two never disagree in sign; None without an evaluation count."""
    evaluations = timing.get("evaluations_per_run")
    if not evaluations:
        return None
    return (timing["median_pair_ratio"] - 1) * statistics.median(timing["baseline_seconds"]) / evaluations * 1e6


def adherence_difference(rows: dict, name: str, reference: str) -> Optional[dict]:
    """Adherence of ``name`` minus ``reference``'s, image by image on the same prompts and seeds,
    with its 95% bootstrap interval over the scored prompts; None when either row lacks per-image
    scores (results stored before they were kept) or they were scored on other images."""
    a, b = (rows[n].get("per_image", {}).get("adherence") for n in (name, reference))
    if not a or not b or [len(g) for g in a] != [len(g) for g in b]:
        return None
    groups = [i for i, g in enumerate(a) for _ in g]
    return stats.paired_bootstrap([h for g in a for h in g], [h for g in b for h in g], groups)


def adherence_bound(rows: dict, name: str, reference: str, at_least: float) -> tuple:
    """(verdict, text) for "adherence of ``name`` minus ``reference``'s is at least ``at_least``"
    (a negative bound: within that many points; positive: that many points above)."""
    point = rows[name]["adherence"] - rows[reference]["adherence"]
    text = f"adherence {rows[name]['adherence']:.3f} vs {rows[reference]['adherence']:.3f} ("
    diff = adherence_difference(rows, name, reference)
    if diff is None:
        return stats.RERUN, text + f"{point * 100:+.1f} points; paired interval: re-run for per-image scores)"
    return stats.judge_at_least(diff["lo"], diff["hi"], at_least), text + stats.fmt_points(diff) + ")"


def overhead(limit: float, baseline: str) -> Target:
    """Wall time of the row against ``baseline`` at equal NFE, from the paired timing runs."""
    def check(name, rows, dataset, timing):
        timing = (timing or {}).get(name)
        if not timing or baseline not in rows:
            return None
        extra = timing["median_pair_ratio"] - 1
        per_eval = overhead_us_per_evaluation(timing)  # recomputed: older results stored another estimator
        return (f"{name} vs {baseline} at equal NFE: overhead <= {limit:.0%} wall time", stats.exact(extra <= limit),
                f"overhead {extra * 100:+.1f}%"
                + (f" ({per_eval:+.0f} us per model evaluation)" if per_eval is not None else "")
                + f": median of {timing['pairs']} back-to-back pair ratios {timing['median_pair_ratio']:.3f} "
                  f"(IQR {timing['pair_ratio_iqr'][0]:.3f}-{timing['pair_ratio_iqr'][1]:.3f}), ratio of medians "
                  f"{timing['ratio_of_medians']:.3f}; NFE {rows[name]['nfe_per_image']:.0f} vs "
                  f"{rows[baseline]['nfe_per_image']:.0f}")
    return check


def nfe_saving(saving: float, slack: float, against: str) -> Target:
    """At least ``saving`` fewer NFE than ``against`` with adherence within ``slack`` (paired)."""
    def check(name, rows, dataset, timing):
        if against not in rows:
            return None
        row, ref = rows[name], rows[against]
        fewer = 1 - row["nfe_per_image"] / ref["nfe_per_image"]
        adherence, text = adherence_bound(rows, name, against, -slack)
        return (f"{name}: >= {saving:.0%} fewer NFE than {against}, adherence within {slack * 100:.0f} points",
                stats.combine(stats.exact(fewer >= saving - 1e-9), adherence),
                f"{fewer:.1%} fewer NFE ({row['nfe_per_image']:.1f} vs {ref['nfe_per_image']:.1f}); {text}")
    return check


def distilled(against: str, untrained: Optional[str] = None, nfe: float = 0.5, wall: float = 0.6,
              slack: float = 0.03, cut: float = 5.0) -> Target:
    """AGD against CFG at the same scale (``against``): ``nfe`` of its NFE, at most ``wall`` of
    the time baseline's (ComfyUI's CFG, the same NFE as ``against``), adherence within
    ``slack``; with ``untrained`` (the row AGD's zero-initialised adapters give, CFG 1), its
    distance to CFG cut at least ``cut`` times."""
    def check(name, rows, dataset, timing):
        if against not in rows or (untrained and untrained not in rows):
            return None
        row, ref = rows[name], rows[against]
        ratio = row["nfe_per_image"] / ref["nfe_per_image"]
        adherence, text = adherence_bound(rows, name, against, -slack)
        parts = [stats.exact(ratio <= nfe), stats.exact(row["time_ratio"] <= wall), adherence]
        numbers = f"NFE {row['nfe_per_image']:.1f} vs {ref['nfe_per_image']:.1f}; time {row['time_ratio']:.3f}; {text}"
        wanted = (f"{name}: <= {nfe:.0%} of {against}'s NFE, <= {wall:g}x ComfyUI CFG's time, adherence within "
                  f"{slack * 100:.0f} points")
        if untrained:
            before, after = rows[untrained]["rmse_to_cfg"], row["rmse_to_cfg"]
            parts.append(stats.exact(before >= cut * after))
            numbers += f"; RMSE to CFG {before:.4f} untrained -> {after:.4f} ({before / max(after, 1e-12):.2f}x)"
            wanted += f", RMSE to CFG cut >= {cut:g}x"
        return wanted, stats.combine(*parts), numbers
    return check


def tamer_saturation(against: str) -> Target:
    """Saturation closer to the dataset's than ``against`` (CFG at the same scale), adherence no worse."""
    def check(name, rows, dataset, timing):
        if against not in rows:
            return None
        row, ref = rows[name], rows[against]
        off = lambda r: abs(r["mean_chroma"] - dataset["mean_chroma"])  # noqa: E731
        adherence, text = adherence_bound(rows, name, against, 0.0)
        return (f"{name}: saturation closer to the dataset's than {against}, adherence no worse",
                stats.combine(stats.exact(off(row) < off(ref)), adherence),
                f"chroma {row['mean_chroma']:.3f} / {against} {ref['mean_chroma']:.3f} / dataset "
                f"{dataset['mean_chroma']:.3f}; clipped {row['clipped_fraction']:.4f} / {ref['clipped_fraction']:.4f}"
                f" / dataset {dataset['clipped_fraction']:.4f}; {text}")
    return check


def guidance_matters(points: float, unguided: str) -> Target:
    """The model's own check: guidance raises adherence by at least ``points`` over ``unguided``."""
    def check(name, rows, dataset, timing):
        if unguided not in rows:
            return None
        verdict, text = adherence_bound(rows, name, unguided, points)
        return (f"default model: adherence of {name} at least {points * 100:.0f} points above {unguided}",
                verdict, text)
    return check


def not_significantly_below(reference: str) -> Target:
    """A sampler's own quality claim: adherence not significantly below ``reference``'s (the
    paired 95% interval of the difference reaches 0 or above), scene distance reported."""
    def check(name, rows, dataset, timing):
        if reference not in rows:
            return None
        diff = adherence_difference(rows, name, reference)
        row, ref = rows[name], rows[reference]
        text = (f"adherence {row['adherence']:.3f} vs {ref['adherence']:.3f} ("
                + (stats.fmt_points(diff) if diff else "paired interval: re-run for per-image scores")
                + f"); scene distance {row['scene_distance']:.3f} vs {ref['scene_distance']:.3f}")
        verdict = stats.RERUN if diff is None else stats.NOT_MET if diff["hi"] < 0 else stats.MET
        return f"{name}: adherence not significantly below {reference}'s", verdict, text
    return check


def oversaturates(name, rows, dataset, timing):
    """The model's own check: high guidance shows its failure (what APG exists to fix)."""
    r = rows[name]
    return (f"default model: saturation of {name} above the dataset's",
            stats.exact(r["mean_chroma"] > dataset["mean_chroma"] and r["clipped_fraction"] > dataset["clipped_fraction"]),
            f"chroma {r['mean_chroma']:.3f} vs {dataset['mean_chroma']:.3f}, clipped "
            f"{r['clipped_fraction']:.4f} vs {dataset['clipped_fraction']:.4f}")
