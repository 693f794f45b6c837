"""The benchmark's inversion section: EDICT against DDIM inversion on images the model made.

For each source/edit prompt pair the runner samples a source image (stock KSampler, CFG 5),
then, side by side and alternating which goes first, inverts it with EDICT and with DDIM
inversion under the source prompt and re-samples both with the edit prompt: EDICT Invert +
EDICT Sample against DDIM Invert + SamplerCustom (euler, noise off) on the same sigmas. The
source graph runs first, untimed, so ComfyUI's cache serves it to both timed graphs and
their execution times hold only the inversion, the re-sampling and one decode.

An edit succeeds when the analyser finds the edited attribute of the edit prompt; it keeps
what it should when the backdrop is the source's, the blob's centre moved at most
``POSITION_TOLERANCE`` of the image and, for colour edits, its shape and its area (within
``COVERAGE_TOLERANCE``) stayed.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, fields

import numpy as np

from ..quality.shapes import analyse
from ..training.dataset import COLOURS, SHAPES, make_batch, parse_prompt, prompt_of
from . import stats
from .graph import Graph, out
from .methods import APG  # its preset value selects the APG Guider's own eta, threshold and momentum

SOURCE_CFG = 5.0
INVERSION_CFG = 3.0  # EDICT's paper scale, for inverting under the source prompt
# Re-sampling under the edit prompt. Chosen with tune_inversion.py (table in docs/benchmark/) on
# pairs the benchmark never scores: at the paper's 0.8 / CFG 3 the pixel-space default models
# keep the source (edits land in ~30% of pairs), since at sigma 0.8 the inverted state still
# shows the blob's colour and outline; from (nearly) pure noise at CFG 5 the flow model's land
# in ~80% (tuned on it; the v-prediction model's in 50% at p 0.93: its settings are in TUNED).
EDIT_CFG = 5.0
EDIT_NEGATIVE = "empty"  # the edit's negative prompt: "empty", or "source" (away from the source prompt)
STRENGTH = 1.0  # how far back: the last `steps` steps of max(steps + 1, steps / STRENGTH) (never sigma_max)
MIXING_WEIGHT = 0.93
POSITION_TOLERANCE = 0.10  # blob centre, as a fraction of the image side
COVERAGE_TOLERANCE = 1.5  # blob area ratio, colour edits only (a new shape has another area)
FIRST_PAIR = ("a red circle on a white background", "a blue circle on a white background")
KEPT_PARTS = ("background", "position", "shape", "area")  # what "rest kept" checks; shape and area: recolouring


@dataclass(frozen=True)
class EditSettings:
    """What tune_inversion.py sweeps; the benchmark runs the module's constants."""
    inversion_cfg: float = INVERSION_CFG
    edit_cfg: float = EDIT_CFG
    strength: float = STRENGTH
    edit_negative: str = EDIT_NEGATIVE  # "empty", or "source": the edit pushes away from the source prompt
    mixing_weight: float = MIXING_WEIGHT  # EDICT's p, for the inversion and the re-sampling alike
    steps: int = 0  # inversion and re-sampling steps; 0: the benchmark's (the source image always uses those)
    inversion_prompt: str = "source"  # what the inversion is conditioned on: "source", or "empty" (the null prompt)
    scheduler: str = "normal"  # ComfyUI scheduler of the inversion and re-sampling sigmas (the source uses "normal")
    # The edit's guidance at edit_cfg: "cfg", or "apg" (APG Guider, momentum 0 so EDICT can run it, with
    # the two values below); the inversion and the reconstruction always use CFG.
    edit_guidance: str = "cfg"
    apg_eta: float = 0.0
    apg_norm_threshold: float = 0.0

    def __post_init__(self):
        if self.edit_negative not in ("empty", "source"):
            raise ValueError(f"edit_negative must be 'empty' or 'source', got {self.edit_negative!r}")
        if self.inversion_prompt not in ("empty", "source"):
            raise ValueError(f"inversion_prompt must be 'empty' or 'source', got {self.inversion_prompt!r}")
        if self.edit_guidance not in ("cfg", "apg"):
            raise ValueError(f"edit_guidance must be 'cfg' or 'apg', got {self.edit_guidance!r}")

    @classmethod
    def parse(cls, text: str) -> "EditSettings":
        """Comma-separated values in field order, the rest left at their defaults:
        ``"3,8,1.0,empty,0.8"``, ``"3,8,1.0,empty,0.86,30"``, ``"1,8,1.0,empty,0.8,0,empty,beta"``,
        ``"3,12,1.0,empty,0.8,0,source,normal,apg,0,4"``."""
        values, names = text.split(","), fields(cls)
        if len(values) > len(names):
            raise ValueError(f"{text!r}: at most {len(names)} values ({', '.join(f.name for f in names)})")
        return cls(**{f.name: type(f.default)(v) for f, v in zip(names, values)})


# Per default model, the settings tune_inversion.py chose on pairs the benchmark never scores
# (tables in docs/benchmark/<model>/); a model not listed runs EditSettings(), the constants above.
TUNED = {
    # Rule: of the settings whose edits land in >= 80 % of 32 tuning pairs, the one that keeps the
    # rest in the most (tune_inversion_mixing_weight.json). p trades one for the other: the lower
    # it is, the more of the source the coupled pair carries back (p 0.6-0.7: edits land in 0-28 %,
    # the rest kept in ~90 %; p 0.93-0.97: the opposite).
    # At p 0.93 the exact inversion holds on to the source (edits land in 50-56 % at edit CFG 5-8);
    # p 0.8 with edit CFG 8 lands 81 % and keeps 59 % (edit CFG 12: 84 % and 41 %). On 48 pairs
    # (tune_inversion_edit_cfg.json) edit CFG 10-15 or p 0.82 land 81-88 % but keep 38-48 %; other
    # steps at the same p^(2 steps), other inversion CFGs, the empty prompt for the inversion and
    # other schedulers land no more (tune_inversion_coupling.json), nor APG as the edit's guidance at
    # 8-20 (tune_inversion_edit_guidance.json: 77-83 %, both 29-40 %).
    "guidance_lab_vpred32": EditSettings(edit_cfg=8.0, mixing_weight=0.8),
    # p 0.85, edit CFG 8: 84 % and 72 % (the constants, p 0.93 and CFG 5: 81 % and 47 %). On 48
    # pairs (tune_inversion_edit_cfg.json), edit CFG 12 lands 92 % and keeps 69 % (CFG 8: 85 %, 71 %).
    "guidance_lab_flow32": EditSettings(edit_cfg=12.0, mixing_weight=0.85),
}


def settings_for(weights: str) -> EditSettings:
    return TUNED.get(weights.removesuffix(".safetensors"), EditSettings())


@dataclass(frozen=True)
class EditPair:
    source: str
    edit: str
    changes: str  # "colour" or "shape"
    seed: int


def edit_pairs(count: int, data_seed: int) -> list:
    """The issue's red-to-blue circle, then dataset prompts alternately recoloured and reshaped."""
    pairs = [EditPair(*FIRST_PAIR, "colour", 0)]
    _, prompts, _ = make_batch(data_seed, 0, count, 32)
    colours = list(COLOURS)
    for i, prompt in enumerate(prompts[:count - 1], start=1):
        shape, colour, background = parse_prompt(prompt)
        if i % 2:
            colour = colours[(colours.index(colour) + 1 + i % (len(colours) - 1)) % len(colours)]
            changes = "colour"
        else:
            shape = SHAPES[(SHAPES.index(shape) + 1 + i % (len(SHAPES) - 1)) % len(SHAPES)]
            changes = "shape"
        # From the template, so the article fits the colour ("an orange star", never "a orange").
        edit = prompt_of(shape, colour, background)
        pairs.append(EditPair(prompt, edit, changes, i))
    return pairs


def _source_nodes(pair: EditPair, steps: int, weights: str, settings: "EditSettings" = EditSettings()) -> tuple:
    g = Graph()
    load = g.add("GuidanceLab_DefaultModelLoader", "load", weights=weights)
    model, clip, vae = out(load, 0), out(load, 1), out(load, 2)
    ids = {"model": model, "vae": vae,
           "positive": out(g.add("CLIPTextEncode", "positive", text=pair.source, clip=clip)),
           "negative": out(g.add("CLIPTextEncode", "negative", text="", clip=clip)),
           "edit": out(g.add("CLIPTextEncode", "edit", text=pair.edit, clip=clip))}
    latent = g.add("EmptyChromaRadianceLatentImage", "latent", width=32, height=32, batch_size=1)
    source = g.add("KSampler", "source", model=model, seed=pair.seed, steps=steps, cfg=SOURCE_CFG,
                   sampler_name="euler", scheduler="normal", positive=ids["positive"], negative=ids["negative"],
                   latent_image=out(latent), denoise=1.0)
    ids["image"] = out(g.add("VAEDecode", "source_image", samples=out(source), vae=vae))
    ids["encoded"] = out(g.add("VAEEncode", "encode", pixels=ids["image"], vae=vae))
    # The last `edit_steps` steps of a schedule of edit_steps / strength, as BasicScheduler's
    # denoise does, but split explicitly: its int() rounding would start a 3-step run at sigma_max.
    edit_steps = settings.steps or steps
    total = max(edit_steps + 1, round(edit_steps / settings.strength))
    full = g.add("BasicScheduler", "schedule", model=model, scheduler=settings.scheduler, steps=total, denoise=1.0)
    ids["sigmas"] = out(g.add("SplitSigmas", "sigmas", sigmas=out(full), step=total - edit_steps), 1)
    return g, ids


def source_graph(pair: EditPair, steps: int, weights: str, settings: "EditSettings" = EditSettings()) -> dict:
    g, ids = _source_nodes(pair, steps, weights, settings)
    g.add("SaveImage", "save", images=ids["image"], filename_prefix="benchmark/inversion/source")
    # ComfyUI runs only an output's ancestors: these make the nodes both timed graphs share (the
    # edit prompt, the encoding, the schedule) run here, untimed, not inside whichever goes first.
    for name in ("edit", "encoded", "sigmas"):
        g.add("PreviewAny", f"shared_{name}", source=ids[name])
    return g.nodes


def edit_graph(pair: EditPair, steps: int, weights: str, method: str, prompt: str = "edit",
               settings: EditSettings = EditSettings()) -> dict:
    """Invert the source with ``method`` ("edict" or "ddim") and re-sample under ``prompt``
    ("edit", or "positive" for the reconstruction: the inversion's own prompt and scale)."""
    g, ids = _source_nodes(pair, steps, weights, settings)
    guided = {"model": ids["model"], "negative": ids["negative"], "sigmas": ids["sigmas"]}
    inversion_positive = ids["negative"] if settings.inversion_prompt == "empty" else ids["positive"]
    resample_positive = ids["edit"] if prompt == "edit" else inversion_positive
    # The negative only matters where the prompt changes: the reconstruction keeps the inversion's.
    resample_negative = ids["positive"] if prompt == "edit" and settings.edit_negative == "source" else ids["negative"]
    # The reconstruction re-samples with the inversion's own scale: that is the exact round trip.
    resample_cfg = settings.edit_cfg if prompt == "edit" else settings.inversion_cfg
    apg = prompt == "edit" and settings.edit_guidance == "apg"
    if apg:
        ids["guidance"] = out(g.add("GuidanceLab_APGGuider", "edit_guidance", model=ids["model"],
                                    positive=resample_positive, negative=resample_negative, cfg=resample_cfg,
                                    preset=APG["preset"], eta=settings.apg_eta,
                                    norm_threshold=settings.apg_norm_threshold, momentum=0.0))
    if method == "edict":
        p = settings.mixing_weight
        inverted = g.add("GuidanceLab_EDICTInvert", "invert", positive=inversion_positive, mixing_weight=p,
                         latent_image=ids["encoded"], precision="float64", cfg=settings.inversion_cfg, **guided)
        sampled = g.add("GuidanceLab_EDICTSample", "resample", positive=resample_positive, mixing_weight=p,
                        edict_latent=out(inverted), cfg=resample_cfg,
                        **{**guided, "negative": resample_negative}, **({"guidance": ids["guidance"]} if apg else {}))
    else:
        inverted = g.add("GuidanceLab_DDIMInvert", "invert", positive=inversion_positive,
                         latent_image=ids["encoded"], cfg=settings.inversion_cfg, **guided)
        sampler = g.add("KSamplerSelect", "sampler", sampler_name="euler")
        if apg:  # the same APG guider, noise off: DDIM's re-sampling under the edit's guidance
            noise = g.add("DisableNoise", "noise")
            sampled = g.add("SamplerCustomAdvanced", "resample", noise=out(noise), guider=ids["guidance"],
                            sampler=out(sampler), sigmas=ids["sigmas"], latent_image=out(inverted))
        else:
            sampled = g.add("SamplerCustom", "resample", model=ids["model"], add_noise=False, noise_seed=0,
                            cfg=resample_cfg, positive=resample_positive, negative=resample_negative,
                            sampler=out(sampler), sigmas=ids["sigmas"], latent_image=out(inverted))
    decoded = g.add("VAEDecode", "decode", samples=out(sampled), vae=ids["vae"])
    g.add("SaveImage", "save", images=out(decoded), filename_prefix=f"benchmark/inversion/{method}_{prompt}")
    return g.nodes


def judge(pair: EditPair, source_image: np.ndarray, edited_image: np.ndarray) -> dict:
    """Did the edit land, and did the rest of the scene stay?"""
    shape, colour, _ = parse_prompt(pair.edit)
    before, after = analyse(source_image), analyse(edited_image)
    landed = after.colour == colour if pair.changes == "colour" else after.shape == shape
    moved = float(np.hypot(*(np.subtract(after.centroid, before.centroid))))
    ratio = (after.coverage + 1e-6) / (before.coverage + 1e-6)
    parts = {"background": after.background == before.background, "position": moved <= POSITION_TOLERANCE}
    if pair.changes == "colour":
        parts["shape"] = after.shape == before.shape
        parts["area"] = 1 / COVERAGE_TOLERANCE <= ratio <= COVERAGE_TOLERANCE
    kept = all(parts.values())
    return {"landed": bool(landed), "kept": bool(kept), "both": bool(landed and kept), "moved": moved,
            "area_ratio": float(ratio), "kept_parts": {k: bool(v) for k, v in parts.items()}}


def kept_parts(judged: list) -> dict:
    """How often each part of "rest kept" held over ``judge`` results, and the median centre move."""
    return {"parts": {part: float(np.mean([j["kept_parts"][part] for j in judged if part in j["kept_parts"]]))
                      for part in KEPT_PARTS if any(part in j["kept_parts"] for j in judged)},
            "moved_median": float(np.median([j["moved"] for j in judged]))}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def run_section(runner, pairs: list, steps: int, weights: str, log=print,
                settings: "EditSettings | None" = None) -> dict:
    """Every pair through both inversions (timed, alternating), plus each one's reconstruction,
    with ``settings`` or the model's tuned ones."""
    from ..image_grid import load_images
    from .guidance_benchmark import execution_seconds

    def images(graph):
        entry = runner.run(graph)
        return load_images(runner.server.output_images(entry))[0], execution_seconds(entry)

    settings = settings or settings_for(weights)
    results = []
    for k, pair in enumerate(pairs):
        source, _ = images(source_graph(pair, steps, weights, settings))
        row = {"pair": pair.__dict__, "seconds": {}, "judged": {}, "reconstruction_psnr": {}}
        edited = {}
        for method in (("edict", "ddim") if k % 2 == 0 else ("ddim", "edict")):
            edited[method], row["seconds"][method] = images(edit_graph(pair, steps, weights, method,
                                                                       settings=settings))
        for method in ("edict", "ddim"):
            row["judged"][method] = judge(pair, source, edited[method])
            rebuilt, _ = images(edit_graph(pair, steps, weights, method, prompt="positive", settings=settings))
            row["reconstruction_psnr"][method] = psnr(rebuilt, source)
        row["images"] = {"source": source, **edited}
        results.append(row)
        log(f"[benchmark] inversion pair {k + 1}/{len(pairs)}: {pair.source!r} -> {pair.edit!r}: "
            + ", ".join(f"{m} {'ok' if row['judged'][m]['both'] else 'miss'}" for m in ("edict", "ddim")))
    return summarise(results, steps, settings)


def summarise(results: list, steps: int, settings: EditSettings) -> dict:
    ratios = sorted(r["seconds"]["edict"] / r["seconds"]["ddim"] for r in results)
    share = {m: {key: float(np.mean([r["judged"][m][key] for r in results])) for key in ("landed", "kept", "both")}
             for m in ("edict", "ddim")}
    for m in ("edict", "ddim"):
        share[m].update(kept_parts([r["judged"][m] for r in results]))
    recon = {m: float(np.median([min(r["reconstruction_psnr"][m], 99.0) for r in results])) for m in ("edict", "ddim")}
    return {"pairs": len(results), "steps": settings.steps or steps, "strength": settings.strength,
            "cfg": settings.inversion_cfg, "edit_cfg": settings.edit_cfg, "mixing_weight": settings.mixing_weight,
            "edit_negative": settings.edit_negative, "inversion_prompt": settings.inversion_prompt,
            "scheduler": settings.scheduler, "edit_guidance": settings.edit_guidance,
            "apg_eta": settings.apg_eta, "apg_norm_threshold": settings.apg_norm_threshold,
            "cost_ratio_median": statistics.median(ratios),
            "cost_ratio_iqr": [float(np.percentile(ratios, 25)), float(np.percentile(ratios, 75))],
            "success": share, "reconstruction_psnr_median": recon, "rows": results}


def _edit_guidance(s: dict) -> str:
    if s.get("edit_guidance", "cfg") == "cfg":
        return f"CFG {s['edit_cfg']:g}"
    return (f"APG {s['edit_cfg']:g} (eta {s['apg_eta']:g}, norm threshold {s['apg_norm_threshold']:g}, "
            "momentum 0)")


def share_interval(summary: dict, method: str, key: str) -> tuple:
    """Wilson's 95% interval of a 0/1 per-pair figure (edits that land, rest kept, both), from the
    per-pair judgements when stored, else from the stored share."""
    rows = summary.get("rows") or []
    if rows:
        hits = [bool(r["judged"][method][key]) for r in rows]
        return stats.wilson(sum(hits), len(hits))
    return stats.wilson_of_share(summary["success"][method][key], summary["pairs"])


def _share(summary: dict, method: str, key: str) -> str:
    lo, hi = share_interval(summary, method, key)
    return f"{summary['success'][method][key]:.0%} ({lo:.0%}-{hi:.0%})"


def markdown(summary: dict) -> str:
    s, e, d = summary, summary["success"]["edict"], summary["success"]["ddim"]
    kinds = [r["pair"]["changes"] for r in s.get("rows", [])]
    mix = (f"{kinds.count('colour')} recolour, {kinds.count('shape')} reshape" if kinds
           else "recolour and reshape alternately")
    cells = {m: " | ".join(_share(s, m, k) for k in ("landed", "kept", "both")) for m in ("edict", "ddim")}
    lines = [
        f"Inversion: {s['pairs']} source/edit prompt pairs ({mix}) on images the model "
        f"made (KSampler, CFG {SOURCE_CFG:g}); each inverted under the {s['inversion_prompt']} prompt at CFG "
        f"{s['cfg']:g} and re-sampled under the edit prompt at {_edit_guidance(s)}, {s['steps']} steps "
        f"({s['scheduler']} schedule) at strength {s['strength']:g}, EDICT (p {s['mixing_weight']:g}) beside DDIM "
        "inversion + SamplerCustom, or SamplerCustomAdvanced for APG (the same settings; tuned per model on "
        "other pairs with tune_inversion.py).",
        "",
        "| inversion | edit lands (95% CI) | rest kept (95% CI) | both (95% CI) | reconstruction PSNR (dB, median) "
        "| time (EDICT / DDIM, median of pairs) |",
        "|---|---:|---:|---:|---:|---:|",
        f"| EDICT | {cells['edict']} | "
        f"{s['reconstruction_psnr_median']['edict']:.1f} | {s['cost_ratio_median']:.2f}x (IQR "
        f"{s['cost_ratio_iqr'][0]:.2f}-{s['cost_ratio_iqr'][1]:.2f}) |",
        f"| DDIM inversion | {cells['ddim']} | "
        f"{s['reconstruction_psnr_median']['ddim']:.1f} | 1 |",
        "",
        f"Rest kept: same backdrop, blob centre within {POSITION_TOLERANCE:.0%} of the image, and for "
        f"recolouring the same shape and an area within {COVERAGE_TOLERANCE}x. Reconstruction: re-sampled "
        "under the source prompt (PSNR capped at 99 dB for exact round trips). Intervals: Wilson's, over the "
        "pairs.",
        "",
        "Each part of \"rest kept\" on its own (EDICT / DDIM): " + ", ".join(
            f"{part} {e['parts'][part]:.0%} / {d['parts'][part]:.0%}" for part in e["parts"])
        + f"; median centre move {e['moved_median']:.3f} / {d['moved_median']:.3f} of the image side.",
    ]
    return "\n".join(lines)


def targets(summary: dict) -> list:
    """The EDICT issue's two measured targets, as (description, verdict, numbers): the share of
    edits that land judged on its Wilson interval, the cost on its median of paired timings."""
    e = summary["success"]["edict"]
    lo, hi = share_interval(summary, "edict", "landed")
    return [
        ("EDICT editing: the edited attribute lands in >= 80% of pairs", stats.judge_at_least(lo, hi, 0.8),
         f"{e['landed']:.0%} of {summary['pairs']} pairs (95% CI {lo:.0%}-{hi:.0%}; rest kept in "
         f"{e['kept']:.0%}); DDIM inversion {summary['success']['ddim']['landed']:.0%}"),
        ("EDICT round trip <= 2.1x DDIM inversion + sampling wall time, same steps",
         stats.exact(summary["cost_ratio_median"] <= 2.1),
         f"{summary['cost_ratio_median']:.2f}x (median of {summary['pairs']} alternating pairs, IQR "
         f"{summary['cost_ratio_iqr'][0]:.2f}-{summary['cost_ratio_iqr'][1]:.2f})"),
    ]
