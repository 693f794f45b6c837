"""The pack's samplers as ComfyUI SAMPLER objects, and what the guider needs to know about
any SAMPLER: how many model evaluations each schedule step makes, and its options."""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from typing import Optional

import comfy.model_sampling
import comfy.samplers
import torch

from ...samplers import REGISTRY
from .compat import ancestral_noise_sampler, ksampler


def model_family(model_sampling) -> str:
    """The core's name for how a model mixes x0 and noise: "flow" for CONST, else "eps"."""
    return "flow" if isinstance(model_sampling, comfy.model_sampling.CONST) else "eps"


PACK_SAMPLER_NODE = "Sampler (Guidance Lab)"


def flow_end_problem(name: str, family: str, sigmas, node: str = PACK_SAMPLER_NODE) -> "str | None":
    """Why a run of ``name`` cannot end where ``sigmas`` does, or None. KSAMPLER hands back a
    flow model's state at the last sigma as x / (1 - sigma): at sigma 1 (where FlipSigmas puts
    the end of an inversion) that is inf everywhere, and sampling on from it gives NaN."""
    if family != "flow" or len(sigmas) < 2 or float(sigmas[-1]) < 1.0:
        return None
    return (f"{node} '{name}': the schedule ends at sigma {float(sigmas[-1]):g} on a flow model, "
            "and ComfyUI keeps a partly noised flow latent as x / (1 - sigma), which has no value at sigma 1 "
            "(the result would be all inf); end it below 1: SplitSigmas at step 1 and FlipSigmas on its "
            "low_sigmas (sample back down on those low_sigmas), or use EDICT Invert")


def on_host(fn, name: str, family_aware: bool, node: str = PACK_SAMPLER_NODE):
    """A pack sampler as ComfyUI runs it: refuses a schedule whose end ComfyUI cannot hand back
    (``flow_end_problem``), tells a family-aware core sampler the model's family, and hands one
    that draws ancestral noise the host's own noise source (compat.ancestral_noise_sampler)."""
    draws_noise = family_aware and "noise_sampler" in inspect.signature(fn).parameters

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        family = model_family(model.inner_model.model_patcher.get_model_object("model_sampling"))
        problem = flow_end_problem(name, family, sigmas, node)
        if problem:
            raise ValueError(problem)
        if hasattr(fn, "schedule_problem") and (problem := fn.schedule_problem(sigmas)):
            raise ValueError(f"{node} '{name}': the sigmas it was given (input 'sigmas' of "
                             f"SamplerCustomAdvanced, or the KSampler's steps): {problem}")
        if draws_noise and options.get("noise_sampler") is None:
            host_noise = ancestral_noise_sampler(x, (extra_args or {}).get("seed"))
            options["noise_sampler"] = lambda z: host_noise(None, None)
        if family_aware:
            options["family"] = family
        return fn(model, x, sigmas, extra_args, callback, disable, **options)

    sample.__name__ = fn.__name__
    sample.evaluations_per_step = getattr(fn, "evaluations_per_step", None)
    return sample


def pack_sampler(name: str, **options) -> comfy.samplers.KSAMPLER:
    if name not in REGISTRY:
        raise ValueError(f"unknown Guidance Lab sampler {name!r}; choose one of {sorted(REGISTRY)}")
    spec = REGISTRY[name]
    return ksampler(on_host(spec.function, name, spec.family_aware), options)


def _ancestral_down_is_zero(s: float, s_next: float, eta: float, family: str, name: str) -> bool:
    """Whether an ancestral DPM step steps down to 0 (and then makes one Euler evaluation):
    ``get_ancestral_step`` for eps models, the RF variants' downstep ratio for flow models."""
    if family == "flow" and name in ("sample_dpm_2_ancestral", "sample_dpmpp_2s_ancestral"):
        return s_next == 0 or (name == "sample_dpm_2_ancestral" and 1 + (s_next / s - 1) * eta == 0)
    if not eta or s_next == 0:
        return s_next == 0
    up = min(s_next, eta * math.sqrt(s_next**2 * (s**2 - s_next**2) / s**2))
    return s_next**2 - up**2 <= 0


def _sa_solver(i, s, s_next, sig, o, family, name):
    pece = name == "sample_sa_solver_pece" or o.get("use_pece", False)
    return 2 if pece and i > 0 and o.get("corrector_order", 4) > 0 else 1


def _heunpp2(i, s, s_next, sig, o, family, name):
    return 1 if s_next == sig[-1] else 2 if sig[i + 2] == sig[-1] else 3


def _ancestral(i, s, s_next, sig, o, family, name):
    return 1 if _ancestral_down_is_zero(s, s_next, o.get("eta", 1.0), family, name) else 2


def _stages(n):
    return lambda i, s, s_next, sig, o, family, name: 1 if s_next == 0 else n


# Model evaluations per step of ComfyUI's samplers (0.3.75 and 0.33), read from comfy/
# k_diffusion/sampling.py and comfy/extra_samplers/uni_pc.py: (i, s_i, s_{i+1}, sigmas, options,
# family, name) -> count. Samplers a host does not ship never match. A sampler not listed
# (dpm_fast and dpm_adaptive keep their own schedule, UNPLANNED; custom nodes' samplers) is
# keyed on its callbacks; GuidedRun checks every plan against them, and the host tests fail on
# a host sampler missing here (tests/host/test_step_accounting.py).
_ONE = ("euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "lms", "dpmpp_2m",
        "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu",
        "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v", "deis", "res_multistep",
        "res_multistep_cfg_pp", "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp",
        "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "unipc", "unipc_bh2")
UNPLANNED = ("dpm_fast", "dpm_adaptive")
COMFY_EVALUATIONS = {
    **{f"sample_{n}": (lambda *a: 1) for n in _ONE},
    **{f"sample_{n}": _stages(2) for n in ("heun", "dpm_2", "dpmpp_sde", "dpmpp_sde_gpu", "seeds_2",
                                            "exp_heun_2_x0", "exp_heun_2_x0_sde")},  # 0.33: seeds_2 at r=1
    "sample_seeds_3": _stages(3),
    "sample_heunpp2": _heunpp2,
    **{f"sample_{n}": _ancestral
       for n in ("dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp")},
    "sample_sa_solver": _sa_solver,
    "sample_sa_solver_pece": _sa_solver,
}


def evaluation_plan(sampler, sigmas: list, family: str) -> Optional[list]:
    """Model evaluations per schedule step of ``sampler`` on ``sigmas`` (host floats), or None
    where the sampler's pattern is not known."""
    fn = getattr(sampler, "sampler_function", None)
    steps = len(sigmas) - 1
    per_step = getattr(fn, "evaluations_per_step", None)  # the pack's samplers (samplers/loop.py)
    if per_step is not None:
        return [int(per_step)] * steps
    rule = COMFY_EVALUATIONS.get(getattr(fn, "__name__", None))
    if rule is None or not getattr(fn, "__module__", "").startswith("comfy."):
        return None
    options = dict(getattr(sampler, "extra_options", {}) or {})
    return [rule(i, sigmas[i], sigmas[i + 1], sigmas, options, family, fn.__name__) for i in range(steps)]


_PACK_ROOT = __package__.rsplit(".nodes.bridge", 1)[0]


def describe(value, depth: int = 0):
    """A JSON-friendly, address-free description of a sampler option: numbers and strings as
    they are, functions by name and the values they close over (e.g. SA-Solver's tau_func
    keeps its eta there), other objects by type."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, numbers.Real):  # numpy scalars and the like
        return float(value)
    if depth > 3:
        return type(value).__qualname__
    if isinstance(value, (list, tuple)):
        return [describe(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {str(k): describe(v, depth + 1) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, torch.Tensor):
        return describe(value.tolist(), depth + 1) if value.numel() <= 64 else f"tensor{tuple(value.shape)}"
    if inspect.isfunction(value):
        cells = zip(value.__code__.co_freevars, value.__closure__ or ())
        closure = {}
        for name, cell in cells:
            try:
                closure[name] = describe(cell.cell_contents, depth + 1)
            except ValueError:  # an empty cell
                closure[name] = None
        return {"function": f"{source(value)}:{value.__qualname__}", "closure": closure}
    return type(value).__qualname__


def source(fn) -> str:
    """Where a sampler function comes from: its ComfyUI module, "guidance_lab" for the pack's
    own (whatever folder the pack is installed in), or the module of a custom node."""
    module = getattr(fn, "__module__", "") or ""
    return "guidance_lab" if module == _PACK_ROOT or module.startswith(_PACK_ROOT + ".") else module


def _defaults(fn) -> dict:
    """The sampler function's own option defaults (eta=1.0 ...), so that KSamplerSelect's
    euler_ancestral and SamplerEulerAncestral at eta 1 count as the same sampler."""
    try:
        return _cached_defaults(fn)
    except TypeError:  # an unhashable callable
        return _cached_defaults.__wrapped__(fn)


@functools.lru_cache(maxsize=256)  # inspect.signature costs more than the rest of a run's set-up
def _cached_defaults(fn) -> dict:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in params
            if p.default is not p.empty and p.name not in ("extra_args", "callback", "disable")}


def sampler_options(sampler) -> dict:
    """Everything about a SAMPLER besides its function's name that changes the trajectory: where
    the function comes from, its options (``extra_options`` over the function's defaults: eta,
    s_noise, ...) and inpaint options."""
    fn = getattr(sampler, "sampler_function", None)
    options = {**(_defaults(fn) if fn is not None else {}), **(getattr(sampler, "extra_options", {}) or {})}
    return {"source": source(fn) if fn is not None else type(sampler).__module__,
            "options": describe(options),
            "inpaint_options": describe(dict(getattr(sampler, "inpaint_options", {}) or {}))}
