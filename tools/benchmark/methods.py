"""The benchmark's rows: one line per guidance method. A new method adds a line to METHODS.

Each row builds its guider (and picks its sampler) on top of ``graph.base_graph``; all rows
share prompts, seeds, steps and schedule. ``reference`` names the row whose images the
row's "distance to CFG" is measured against (ComfyUI's CFG at the same scale).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from . import targets
from .graph import Graph, out

# Settings of the rows, chosen once for the default model and kept here, in one place.
CFG = 5.0  # the default model's usual scale; README and demo use it too
HIGH_CFG = 15.0  # where over-saturation shows, and what APG exists for
AG = {"threshold": 0.995, "space": "auto"}  # the family's default criterion (guiders/adaptive.py)
AG_EPS = {"threshold": 0.999, "space": "eps"}  # the paper's reading, kept to show why it is not the default
CFG_PP_LAMBDA = 0.6
LINEAR_AG = {"warmup_steps": 2, "evaluate_every": 5}
LINEAR_AG_CALIBRATION = {"runs": 8, "first_seed": 100000}
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


def stock_sampler(g: Graph, name: str = "euler") -> list:
    return out(g.add("KSamplerSelect", "sampler", sampler_name=name))


def pack_sampler(g: Graph, name: str) -> list:
    return out(g.add("GuidanceLab_SamplerSelect", "sampler", sampler_name=name))


def prompts(ids: dict) -> dict:
    return {"model": ids["model"], "positive": ids["positive"], "negative": ids["negative"]}


def comfy_cfg(cfg: float):
    def build(g, ids, ctx):
        guider = g.add("CFGGuider", "guider", cfg=cfg, **prompts(ids))
        return out(guider), stock_sampler(g), False
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


def adaptive(inner: Callable, settings: dict = AG):
    def build(g, ids, ctx):
        guider, sampler, _ = inner(g, ids, ctx)
        switched = g.add("GuidanceLab_AdaptiveGuidance", "adaptive", guider=guider, **settings)
        return out(switched), sampler, True
    return build


def linear_ag(g, ids, ctx):
    guider = g.add("GuidanceLab_LinearAGGuider", "guider", coefficients_file=ctx["linear_ag_file"],
                   **LINEAR_AG, **prompts(ids))
    return out(guider), stock_sampler(g), True


METHODS = [
    Method("comfy_cfg_1", "ComfyUI CFGGuider, CFG 1 (no guidance)", comfy_cfg(1.0), 1.0),
    Method("comfy_cfg", f"ComfyUI CFGGuider, CFG {CFG:g}", comfy_cfg(CFG), CFG,
           target=targets.guidance_matters(0.25, "comfy_cfg_1")),
    Method("cfg", f"Guidance Lab CFG, CFG {CFG:g}", pack_cfg(CFG), CFG, "comfy_cfg",
           target=targets.overhead(0.02, "comfy_cfg")),
    Method("ag", f"AG (CFG {CFG:g}, {AG['space']} agreement > {AG['threshold']:g})", adaptive(pack_cfg(CFG)), CFG,
           "comfy_cfg", target=targets.nfe_saving(0.25, 0.02, "cfg")),
    Method("ag_eps", f"AG (CFG {CFG:g}, eps cosine > {AG_EPS['threshold']:g})", adaptive(pack_cfg(CFG), AG_EPS),
           CFG, "comfy_cfg"),
    Method("linear_ag", f"LinearAG (CFG {CFG:g}, warm-up {LINEAR_AG['warmup_steps']}, every "
           f"{LINEAR_AG['evaluate_every']})", linear_ag, CFG, "comfy_cfg", needs_calibration=True,
           target=targets.nfe_saving(0.40, 0.05, "cfg")),
    Method("cfg_pp", f"CFG++ Euler (lambda {CFG_PP_LAMBDA:g})", pack_cfg(CFG_PP_LAMBDA, "euler_cfg_pp"),
           CFG, "comfy_cfg"),
    Method("apg", f"APG, CFG {CFG:g}", pack_apg(CFG), CFG, "comfy_cfg"),
    Method("comfy_cfg_15", f"ComfyUI CFGGuider, CFG {HIGH_CFG:g}", comfy_cfg(HIGH_CFG), HIGH_CFG,
           target=targets.oversaturates),
    Method("cfg_15", f"Guidance Lab CFG, CFG {HIGH_CFG:g}", pack_cfg(HIGH_CFG), HIGH_CFG, "comfy_cfg_15"),
    Method("comfy_apg_15", f"ComfyUI APG node + CFGGuider, CFG {HIGH_CFG:g}", comfy_apg(HIGH_CFG), HIGH_CFG,
           "comfy_cfg_15"),
    Method("apg_15", f"APG, CFG {HIGH_CFG:g}", pack_apg(HIGH_CFG), HIGH_CFG, "comfy_cfg_15",
           target=targets.tamer_saturation("cfg_15")),
    Method("ag_apg_15", f"AG + APG (CFG {HIGH_CFG:g}, {AG['space']} agreement > {AG['threshold']:g})",
           adaptive(pack_apg(HIGH_CFG)), HIGH_CFG, "comfy_cfg_15"),
]
BASELINE = "comfy_cfg"  # wall time is reported relative to this row, measured in the same run
BY_NAME = {m.name: m for m in METHODS}
