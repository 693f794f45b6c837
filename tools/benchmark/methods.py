"""The benchmark's rows: one line per guidance method. A new method adds a line to METHODS.

Each row builds its guider (and picks its sampler) on top of ``graph.base_graph``; all rows
share prompts, seeds, steps and schedule. ``reference`` names the row whose images the
row's "distance to CFG" is measured against (ComfyUI's CFG at the same scale; for CFG 1, at
CFG's usual scale, which makes it AGD's distance before training).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from . import targets
from .graph import Graph, out

# Settings of the rows, chosen once for the default model and kept here, in one place.
CFG = 5.0  # the default model's usual scale; README and demo use it too
HIGH_CFG = 15.0  # where over-saturation shows, and what APG exists for
LOW_CFG = 3.0  # AGD's second scale: the issue asks for two inside its trained range (1-8)
AG = {"threshold": 0.995, "space": "auto"}  # the family's default criterion (guiders/adaptive.py)
AG_EPS = {"threshold": 0.999, "space": "eps"}  # the paper's reading, kept to show why it is not the default
CFG_PP_LAMBDA = 0.6
LINEAR_AG = {"warmup_steps": 2, "evaluate_every": 5}
LINEAR_AG_CALIBRATION = {"runs": 8, "first_seed": 100000}
# Per default model, AG's and LinearAG's settings chosen by tools/benchmark/tune.py on prompts
# and seeds the benchmark never scores; a model not listed runs AG and LINEAR_AG above.
TUNED = {
    # tune.py, 12 prompts x 4 seeds: no AG threshold keeps adherence within 2 points at >= 25%
    # fewer NFE (0.99995: 36 NFE, -2.1 points; 0.9995: 29 NFE, -14.6) and no LinearAG schedule
    # at <= 24 NFE within 5 (the per-lag fit, tune_linear_ag_per_lag.json: 3/10, -20.8 points): the best
    # adherence at the targets' NFE.
    "guidance_lab_flow32": {"ag": {"threshold": 0.9995, "space": "auto"},
                            "linear_ag": {"warmup_steps": 3, "evaluate_every": 10}},
    # Tuned on the vz4 export: 0.999: 29.7 NFE at +4.2 points; no LinearAG schedule at <= 24 NFE
    # within 5 points (per-lag fit: 1/3 guided for the first half, -8.3), so the best adherence at
    # the target's NFE.
    "guidance_lab_vpred32": {"ag": {"threshold": 0.999, "space": "auto"},
                             "linear_ag": {"warmup_steps": 1, "evaluate_every": 3, "guidance_end": 0.5}},
    # Tuned on the shipped dit13 (guidance_lab_dit32/tune.json, CFG 0.812): only 0.99995 keeps
    # adherence within 2 points, at 36.2 NFE (10 % saved); at <= 30 NFE the best is 0.9995 (29.8
    # NFE, -6.2 points); LinearAG 3/10 at 24 NFE, -6.2 points (the others -12 to -35). As on the
    # flow UNet, the best adherence at the targets' NFE.
    "guidance_lab_dit32": {"ag": {"threshold": 0.9995, "space": "auto"},
                           "linear_ag": {"warmup_steps": 3, "evaluate_every": 10}},
}
APG = {"preset": "custom (use the values below)", "eta": 0.0, "norm_threshold": 6.5, "momentum": -0.5}


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    build: Callable  # (graph, ids, context) -> (guider, sampler, pack_sampler)
    cfg: float
    reference: Optional[str] = None
    needs_calibration: bool = False
    target: Optional[targets.Target] = None  # what this row must show, judged in report.py
    # Rows that sample without a GUIDER (the stock KSampler) build their sampling node here:
    # (graph, ids, context) -> the LATENT output; ``build`` is then unused.
    sample: Optional[Callable] = None
    # AGD's rows and their CFG 3 reference: only on a default model the pack ships AGD adapters
    # for (``ctx["agd_adapter"]``); elsewhere CFG 3 would be a row nothing is compared with.
    needs_agd: bool = False
    # The row timed back to back against this one, pair by pair, for an overhead target.
    paired_with: Optional[str] = None
    # NFE per image of a row ComfyUI samples without the pack's record, by construction
    # (steps -> NFE); unset: CFGGuider's 2 per step (1 at CFG 1).
    stock_nfe: Optional[Callable] = None


def stock_sampler(g: Graph, name: str = "euler") -> list:
    return out(g.add("KSamplerSelect", "sampler", sampler_name=name))


def pack_sampler(g: Graph, name: str) -> list:
    return out(g.add("GuidanceLab_SamplerSelect", "sampler", sampler_name=name))


def prompts(ids: dict) -> dict:
    return {"model": ids["model"], "positive": ids["positive"], "negative": ids["negative"]}


def comfy_cfg(cfg: float, sampler: str = "euler"):
    def build(g, ids, ctx):
        guider = g.add("CFGGuider", "guider", cfg=cfg, **prompts(ids))
        return out(guider), stock_sampler(g, sampler), False
    return build


def comfy_apg(cfg: float):
    def build(g, ids, ctx):
        patched = g.add("APG", "apg", model=ids["model"], eta=APG["eta"], norm_threshold=APG["norm_threshold"],
                        momentum=APG["momentum"])
        guider = g.add("CFGGuider", "guider", cfg=cfg, **{**prompts(ids), "model": out(patched)})
        return out(guider), stock_sampler(g), False
    return build


def pack_cfg(cfg: float, sampler: Optional[str] = None):
    def build(g, ids, ctx):
        guider = g.add("GuidanceLab_CFGGuider", "guider", cfg=cfg, **prompts(ids))
        return out(guider), pack_sampler(g, sampler) if sampler else stock_sampler(g), True
    return build


def pack_apg(cfg: float):
    def build(g, ids, ctx):
        guider = g.add("GuidanceLab_APGGuider", "guider", cfg=cfg, **APG, **prompts(ids))
        return out(guider), stock_sampler(g), True
    return build


def is_tuned(weights: str) -> bool:
    """Whether tune.py chose AG's and LinearAG's settings for the default model ``weights``."""
    return weights.removesuffix(".safetensors") in TUNED


def tuned(weights: str) -> dict:
    """AG's and LinearAG's settings for the default model ``weights`` (a file name)."""
    return {"ag": AG, "linear_ag": LINEAR_AG, **TUNED.get(weights.removesuffix(".safetensors"), {})}


def adaptive(inner: Callable, settings: Optional[dict] = None):
    """AG around ``inner``'s guider, with ``settings`` or the model's tuned ones (``ctx["ag"]``)."""
    def build(g, ids, ctx):
        guider, sampler, _ = inner(g, ids, ctx)
        switched = g.add("GuidanceLab_AdaptiveGuidance", "adaptive", guider=guider, **(settings or ctx["ag"]))
        return out(switched), sampler, True
    return build


def ksampler(cfg: float, patch: Optional[Callable] = None):
    """The stock KSampler, as most shared graphs sample; ``patch`` (a guider build) turns its
    MODEL into one patched with that guider's policy by Guidance Model Patch."""
    def sample(g, ids, ctx):
        model = ids["model"]
        if patch is not None:
            guider, _, _ = patch(g, ids, ctx)
            model = out(g.add("GuidanceLab_ModelPatch", "patch", model=model, guider=guider))
        sampled = g.add("KSampler", "ksampler", model=model, seed=ids["seed"], steps=ids["steps"], cfg=cfg,
                        sampler_name="euler", scheduler=ids["scheduler"], positive=ids["positive"],
                        negative=ids["negative"], latent_image=ids["latent"], denoise=1.0)
        if patch is not None:
            g.add("GuidanceLab_GuidanceReport", "report", latent=out(sampled))
        return out(sampled)
    return sample


def guided_steps(steps: int, share: float) -> int:
    return int(round(steps * share))


def cfg_then_unguided(cfg: float, share: float):
    """ComfyUI's own two-KSamplerAdvanced split: CFG for the first ``share`` of the steps, then
    CFG 1 (the prompt alone) on the same schedule and noise. A switch fixed in advance, at the
    NFE an adaptive switch saves: what AG's or LinearAG's adherence is worth against."""
    def sample(g, ids, ctx):
        split = guided_steps(ids["steps"], share)
        common = {"model": ids["model"], "noise_seed": ids["seed"], "steps": ids["steps"], "sampler_name": "euler",
                  "scheduler": ids["scheduler"], "positive": ids["positive"], "negative": ids["negative"]}
        guided = g.add("KSamplerAdvanced", "ksampler", add_noise="enable", cfg=cfg, latent_image=ids["latent"],
                       start_at_step=0, end_at_step=split, return_with_leftover_noise="enable", **common)
        rest = g.add("KSamplerAdvanced", "ksampler_rest", add_noise="disable", cfg=1.0, latent_image=out(guided),
                     start_at_step=split, end_at_step=ids["steps"], return_with_leftover_noise="disable", **common)
        return out(rest)
    return sample


def split_nfe(share: float):
    return lambda steps: float(steps + guided_steps(steps, share))


def linear_ag_with(settings: Optional[dict] = None):
    """LinearAG with ``settings`` or the model's tuned ones (``ctx["linear_ag"]``)."""
    def build(g, ids, ctx):
        guider = g.add("GuidanceLab_LinearAGGuider", "guider", coefficients_file=ctx["linear_ag_file"],
                       **(settings or ctx["linear_ag"]), **prompts(ids))
        return out(guider), stock_sampler(g), True
    return build


def bidirectional_sampler(method: str, cfg: float):
    """ComfyUI's CFGGuider with the pack's BDIA / O-BELM Sampler in SamplerCustomAdvanced: the
    sampler's own quality at CFG's NFE (one guided evaluation per step, like euler's)."""
    def build(g, ids, ctx):
        from guidance_lab.samplers.bidirectional import SAMPLING_GAMMA  # the pack is imported by then

        guider = g.add("CFGGuider", "guider", cfg=cfg, **prompts(ids))
        sampler = g.add("GuidanceLab_BidirectionalSampler", "sampler", method=method, gamma=SAMPLING_GAMMA)
        return out(guider), out(sampler), False
    return build


def agd(scale: float):
    """The shipped AGD adapters on the model, the AGD Guider at ``scale``: 1 NFE per step."""
    def build(g, ids, ctx):
        loaded = g.add("GuidanceLab_AGDAdapterLoader", "agd_loader", model=ids["model"],
                       adapter_file=ctx["agd_adapter"])
        guider = g.add("GuidanceLab_AGDGuider", "guider", model=out(loaded), positive=ids["positive"], scale=scale)
        return out(guider), stock_sampler(g), True
    return build


METHODS = [
    # Its distance to CFG is also AGD's before training: zero-initialised adapters leave the
    # model as it is, and one conditional pass per step is CFG 1.
    Method("comfy_cfg_1", "ComfyUI CFGGuider, CFG 1 (no guidance)", comfy_cfg(1.0), 1.0, "comfy_cfg"),
    Method("comfy_cfg", f"ComfyUI CFGGuider, CFG {CFG:g}", comfy_cfg(CFG), CFG,
           target=targets.guidance_matters(0.25, "comfy_cfg_1")),
    Method("cfg", f"Guidance Lab CFG, CFG {CFG:g}", pack_cfg(CFG), CFG, "comfy_cfg",
           target=targets.overhead(0.02, "comfy_cfg"), paired_with="comfy_cfg"),
    Method("comfy_ksampler", f"ComfyUI KSampler, CFG {CFG:g}", None, CFG, "comfy_cfg", sample=ksampler(CFG)),
    Method("ksampler_patch", f"KSampler + Guidance Model Patch (CFG policy), CFG {CFG:g}", None, CFG,
           "comfy_cfg", sample=ksampler(CFG, pack_cfg(CFG)), target=targets.overhead(0.03, "comfy_ksampler"),
           paired_with="comfy_ksampler"),
    Method("ag", f"AG (CFG {CFG:g}, threshold tuned per model)", adaptive(pack_cfg(CFG)), CFG,
           "comfy_cfg", target=targets.nfe_saving(0.25, 0.02, "cfg")),
    Method("ag_eps", f"AG (CFG {CFG:g}, eps cosine > {AG_EPS['threshold']:g})", adaptive(pack_cfg(CFG), AG_EPS),
           CFG, "comfy_cfg"),
    Method("linear_ag", f"LinearAG (CFG {CFG:g}, schedule tuned per model)", linear_ag_with(), CFG, "comfy_cfg",
           needs_calibration=True, target=targets.nfe_saving(0.40, 0.05, "cfg")),
    # AG's and LinearAG's NFE budgets (25 % and 40 % below CFG) spent on a switch fixed in advance.
    Method("switch_50", f"KSamplerAdvanced x 2: CFG {CFG:g} for the first half of the steps, then CFG 1", None, CFG,
           "comfy_cfg", sample=cfg_then_unguided(CFG, 0.5), stock_nfe=split_nfe(0.5)),
    Method("switch_20", f"KSamplerAdvanced x 2: CFG {CFG:g} for the first fifth of the steps, then CFG 1", None,
           CFG, "comfy_cfg", sample=cfg_then_unguided(CFG, 0.2), stock_nfe=split_nfe(0.2)),
    Method("cfg_pp", f"CFG++ Euler (lambda {CFG_PP_LAMBDA:g})", pack_cfg(CFG_PP_LAMBDA, "euler_cfg_pp"),
           CFG, "comfy_cfg"),
    Method("apg", f"APG, CFG {CFG:g}", pack_apg(CFG), CFG, "comfy_cfg"),
    # The one-evaluation exact inversions as plain samplers (issue 32): quality beside euler's.
    Method("o_belm", f"O-BELM sampler + ComfyUI CFGGuider, CFG {CFG:g}", bidirectional_sampler("o_belm", CFG), CFG,
           "comfy_cfg", target=targets.not_significantly_below("comfy_cfg")),
    Method("bdia", f"BDIA sampler (gamma 0.5) + ComfyUI CFGGuider, CFG {CFG:g}", bidirectional_sampler("bdia", CFG),
           CFG, "comfy_cfg", target=targets.not_significantly_below("comfy_cfg")),
    # No target: ComfyUI's own second-order multistep sampler, to tell what a second-order
    # solver does to adherence on each model from what O-BELM's rule does.
    Method("comfy_dpmpp_2m", f"ComfyUI CFGGuider + dpmpp_2m, CFG {CFG:g}", comfy_cfg(CFG, "dpmpp_2m"), CFG,
           "comfy_cfg"),
    Method("agd", f"AGD (shipped adapters), scale {CFG:g}", agd(CFG), CFG, "comfy_cfg", needs_agd=True,
           target=targets.distilled("comfy_cfg", "comfy_cfg_1")),
    Method("comfy_cfg_3", f"ComfyUI CFGGuider, CFG {LOW_CFG:g}", comfy_cfg(LOW_CFG), LOW_CFG, needs_agd=True),
    Method("agd_3", f"AGD (shipped adapters), scale {LOW_CFG:g}", agd(LOW_CFG), LOW_CFG, "comfy_cfg_3",
           needs_agd=True, target=targets.distilled("comfy_cfg_3")),
    Method("comfy_cfg_15", f"ComfyUI CFGGuider, CFG {HIGH_CFG:g}", comfy_cfg(HIGH_CFG), HIGH_CFG,
           target=targets.oversaturates),
    Method("cfg_15", f"Guidance Lab CFG, CFG {HIGH_CFG:g}", pack_cfg(HIGH_CFG), HIGH_CFG, "comfy_cfg_15"),
    Method("comfy_apg_15", f"ComfyUI APG node + CFGGuider, CFG {HIGH_CFG:g}", comfy_apg(HIGH_CFG), HIGH_CFG,
           "comfy_cfg_15"),
    Method("apg_15", f"APG, CFG {HIGH_CFG:g}", pack_apg(HIGH_CFG), HIGH_CFG, "comfy_cfg_15",
           target=targets.tamer_saturation("cfg_15")),
    Method("ag_apg_15", f"AG + APG (CFG {HIGH_CFG:g}, AG's tuned threshold)", adaptive(pack_apg(HIGH_CFG)),
           HIGH_CFG, "comfy_cfg_15"),
]
BASELINE = "comfy_cfg"  # wall time is reported relative to this row, measured in the same run
BY_NAME = {m.name: m for m in METHODS}
