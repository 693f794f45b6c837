"""The pack's policies as a MODEL patch: the stock KSampler, KSamplerAdvanced, SamplerCustom
(anything that samples through ComfyUI's own ``CFGGuider``) runs a pack policy, with the
sampler's cfg as the scale.

The patched clone holds one thing: an OUTER_SAMPLE wrapper (key ``PATCH_KEY``) that closes
over the immutable policy. Everything of a run is made by that wrapper when the run starts
and lives in the run's own model options (the per-sample clone ``CFGGuider.sample`` makes),
so two queued prompts sharing the patched MODEL never share state:

- a ``GuidedRun`` (policy state, step keying from the sampler's evaluation plan, record);
- a ``sampler_calc_cond_batch_function`` that asks the run whether uncond is needed and
  calls the model with the conditional batch alone when it is not (``plan``);
- a last ``sampler_pre_cfg_function``: it combines the estimates into the policy's guided
  one (``combine``, after the model's own pre-CFG patches, as on the guider path) and hands
  ComfyUI, in place of its uncond, the D_u a CFG++ sampler must re-noise with
  (``renoise_uncond``): every post-CFG hook reads ComfyUI's uncond, including those a sampler
  adds after this patch;
- the first ``sampler_post_cfg_function``: it discards ComfyUI's CFG result, returns the
  policy's guided estimate and runs the model's other post-CFG patches after it, exactly as
  ``PolicyGuider.predict_noise`` does, so both paths give the same bits;
- an APPLY_MODEL wrapper that counts NFE where the model is really called.

The record rides on the sampled latent tensor (attribute ``RECORD_ATTR``): the Guidance
Report node reads it from the LATENT, so each run's report follows its own output (and
ComfyUI's cache) instead of living on the shared model.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Optional

import comfy.model_management
import comfy.patcher_extension
import comfy.samplers

from ...guiders import GuidancePolicy, GuidanceRecord, GuidedRun
from ...guiders.adaptive import AdaptivePolicy
from ...guiders.guided_run import NonFiniteEstimate
from ...guiders.linear_ag import LinearAGPolicy
from ...guiders.policy import SettingMismatch
from . import compat
from .policy_guider import PolicyGuider, run_transformer_options, sampler_name
from .samplers import evaluation_plan, model_family, sampler_options

log = logging.getLogger("guidance_lab")

PATCH_KEY = "guidance_lab_policy_patch"
NFE_KEY = "guidance_lab_patch_nfe"
RECORD_ATTR = "guidance_lab_record"
OUTER = comfy.patcher_extension.WrappersMP.OUTER_SAMPLE


def policy_at_scale(policy: GuidancePolicy, scale: float) -> GuidancePolicy:
    """The policy with the sampler's cfg as its scale. LinearAG's coefficients were fitted at
    the calibration's scale, so there the cfg must match it (ValueError otherwise)."""
    if isinstance(policy, AdaptivePolicy):
        return dataclasses.replace(policy, inner=policy_at_scale(policy.inner, scale))
    if isinstance(policy, LinearAGPolicy):
        if not math.isclose(scale, policy.scale, rel_tol=1e-6):
            raise ValueError(f"the LinearAG coefficients were calibrated at cfg {policy.scale:g}; set the "
                             f"sampler's cfg to {policy.scale:g} (it is {scale:g}) or calibrate at this cfg")
        return policy
    if dataclasses.is_dataclass(policy) and any(f.name == "scale" for f in dataclasses.fields(policy)):
        return dataclasses.replace(policy, scale=float(scale))
    raise ValueError(f"the {policy.name} policy has no guidance scale the sampler's cfg could set")


def patched_policy(model_patcher) -> Optional[GuidancePolicy]:
    """The pack policy a MODEL is patched with, or None."""
    wrappers = model_patcher.get_wrappers(OUTER, PATCH_KEY)
    return getattr(wrappers[0], "policy", None) if wrappers else None


def patch_model(model_patcher, policy: GuidancePolicy, node_name: str):
    """A clone of ``model_patcher`` whose CFGGuider runs ``policy`` (see the module docstring)."""
    patched = model_patcher.clone()

    def outer_sample(executor, *args, **kwargs):
        return _run(executor, policy, node_name, args, kwargs)

    outer_sample.policy = policy  # read by patched_policy; the wrapper holds no run state
    patched.add_wrapper_with_key(OUTER, PATCH_KEY, outer_sample)
    return patched


def run_record(latent: dict) -> Optional[GuidanceRecord]:
    """The record a patched run left on its sampled LATENT, or None."""
    samples = latent.get("samples") if isinstance(latent, dict) else None
    return getattr(samples, RECORD_ATTR, None)


def _run(executor, policy, node_name, args, kwargs):
    guider = executor.class_obj
    if type(guider).predict_noise is not comfy.samplers.CFGGuider.predict_noise:
        # Another guider decides the guided estimate itself; patching its model changes nothing.
        note = f"{node_name}: the model's Guidance Lab patch is not used by {type(guider).__name__}"
        if isinstance(guider, PolicyGuider) and guider._guided_run is not None:
            guider._guided_run.record.warn(note + " (the guider runs its own policy)")
        log.warning(note)
        return executor(*args, **kwargs)
    names = ("noise", "latent_image", "sampler", "sigmas", "denoise_mask", "callback")
    given = {**dict(zip(names, args)), **kwargs}
    latent, sampler, sigmas = given["latent_image"], given["sampler"], given["sigmas"]
    schedule = sigmas.tolist()  # read once, before the loop, as PolicyGuider does
    family = model_family(guider.model_patcher.get_model_object("model_sampling"))
    try:
        run_policy = policy_at_scale(policy, float(guider.cfg))
        run_policy.check_run(sampler_name(sampler), schedule, sampler_options(sampler))
    except SettingMismatch:
        raise  # names the guider node and input the settings came from, not this patch
    except ValueError as err:
        raise ValueError(f"{node_name}: {err}") from err
    run = GuidedRun(run_policy, total_steps=max(len(schedule) - 1, 0), batch_size=int(latent.shape[0]),
                    family=family, plan=evaluation_plan(sampler, schedule, family), schedule=schedule)
    _install(guider, run)

    callback = given.get("callback")

    def step_callback(step, x0, x, total_steps):
        run.step_done(step)
        if callback is not None:
            callback(step, x0, x, total_steps)

    if len(args) > 5:
        args = (*args[:5], step_callback, *args[6:])
    else:
        kwargs = {**kwargs, "callback": step_callback}
    out = executor(*args, **kwargs)
    try:
        record = run.finish()
    except NonFiniteEstimate as err:
        raise ValueError(f"{node_name}: {err}") from err
    log.info("%s: %s", node_name, record.summary().replace("\n", "; "))
    # The samplers' callers move the result to the intermediate device and dtype (0.33's
    # --fp16-intermediates); doing it here keeps this tensor (and the record on it) the one
    # that lands in the LATENT.
    out = out.to(device=comfy.model_management.intermediate_device(), dtype=compat.intermediate_dtype(out.dtype))
    setattr(out, RECORD_ATTR, record)
    return out


def _install(guider, run: GuidedRun) -> None:
    """The run's hooks, in ``guider.model_options``: the per-sample clone of this run only."""
    options = guider.model_options
    policy = run.policy
    options.setdefault("transformer_options", {}).update(run_transformer_options(policy, guider.model_patcher))
    previous_batch = options.get("sampler_calc_cond_batch_function")
    others = list(options.get("sampler_post_cfg_function", []))
    pending = []  # the evaluation between the cond-batch hook and the post-CFG hook

    def calc_cond_batch(args):
        x, sigma, model_options = args["input"], args["sigma"], args["model_options"]
        step, need = run.plan(x, sigma, bool(model_options.get("disable_cfg1_optimization", False)))
        # ComfyUI drops uncond at cfg 1; a policy that wants it still gets the guider's (a
        # guider without a negative prompt, BasicGuider, has none to give).
        negative = args["conds"][1] if args["conds"][1] is not None else guider.conds.get("negative")
        need = need and negative is not None
        conds = [args["conds"][0], negative if need else None]
        pending[:] = [step, need, None]
        if previous_batch is not None:
            return previous_batch({**args, "conds": conds})
        return comfy.samplers.calc_cond_batch(args["model"], conds, x, sigma, model_options)

    def pre_cfg(args):
        step, need, _ = pending
        cond, uncond = args["conds_out"][0], args["conds_out"][1]
        guided = run.combine(step, need, cond, uncond if need else None)
        pending[2] = guided
        # ComfyUI hands this uncond to every post-CFG hook, those a sampler adds after this
        # patch too (a CFG++ sampler re-noises with it): the policy's D_u, or D_c where it skipped
        # the evaluation (never ComfyUI's zero placeholder), as on the guider path.
        return [cond, guided.renoise_uncond(cond), *args["conds_out"][2:]]

    def post_cfg(args):
        guided = pending[2]
        cond = args["cond_denoised"]
        result = guided.denoised
        model_options = args["model_options"]
        if "sampler_cfg_function" in model_options:
            if policy.is_plain_cfg:
                result = args["denoised"]  # ComfyUI's patched CFG, as PolicyGuider applies it
            else:
                run.record.warn(f"the model's patched CFG function (e.g. RescaleCFG) is not applied: the "
                                f"{policy.name} policy decides the guided estimate itself")
        uncond_denoised = guided.renoise_uncond(cond)
        for fn in others:  # the model's other post-CFG patches, with PolicyGuider's arguments
            result = fn({**args, "denoised": result, "uncond": guider.conds.get("negative"),
                         "uncond_denoised": uncond_denoised, "cond_denoised": cond})
        return result

    options["sampler_calc_cond_batch_function"] = calc_cond_batch
    options["sampler_pre_cfg_function"] = [*options.get("sampler_pre_cfg_function", []), pre_cfg]
    options["sampler_post_cfg_function"] = [post_cfg]

    def count_evaluations(executor, x, *a, **kw):
        run.count_evaluations(int(x.shape[0]))
        return executor(x, *a, **kw)

    comfy.patcher_extension.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, NFE_KEY,
                                                 count_evaluations, options, is_model_options=True)
