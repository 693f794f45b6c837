"""One ComfyUI GUIDER for every guidance policy of the pack."""

from __future__ import annotations

import logging
from typing import Optional

import comfy.patcher_extension
import comfy.samplers
import torch

from ...guiders import GuidancePolicy, GuidanceRecord, GuidedRun
from ...guiders.agd.policy import RUN_KEY as AGD_RUN_KEY
from ...guiders.guided_run import NonFiniteEstimate
from ...guiders.policy import SettingMismatch
from .samplers import evaluation_plan, model_family, sampler_options

log = logging.getLogger("guidance_lab")

NFE_WRAPPER_KEY = "guidance_lab_nfe"


def run_transformer_options(policy: GuidancePolicy, model_patcher) -> dict:
    """The policy's per-run transformer options. AGD's also carry the sampled model's
    model_sampling: a ModelSampling node after the adapter loader changes sigma's timestep,
    and the adapters must read the timestep the network gets."""
    options = policy.transformer_options()
    run = options.get(AGD_RUN_KEY)
    if run is not None:
        options = {**options, AGD_RUN_KEY: {**run, "model_sampling": model_patcher.get_model_object("model_sampling")}}
    return options


class PolicyGuider(comfy.samplers.CFGGuider):
    """A ``CFGGuider`` that asks a policy, at every evaluation, whether the unconditional
    estimate is needed and how to combine the two.

    Cond and uncond go to the model in one batched call when both are needed (ComfyUI's
    ``calc_cond_batch``), the conditional batch alone when the policy skips uncond.
    ComfyUI's pre- and post-CFG model patches still run around the policy. The settings
    (``policy``) are shared by every run; the state of a run (``GuidedRun``) is created in
    ``sample`` and dropped when it returns, so cached guiders reused by later prompts
    never see an earlier run's state.
    """

    def __init__(self, model_patcher, policy: GuidancePolicy, node_name: str = "Guidance Lab guider"):
        super().__init__(model_patcher)
        self.policy = policy
        self.node_name = node_name
        self.cfg = getattr(policy, "scale", 1.0)
        self.last_record: Optional[GuidanceRecord] = None
        self._guided_run: Optional[GuidedRun] = None

    def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None,
               disable_pbar=False, seed=None, **host_kwargs):
        """Delegates to ``CFGGuider.sample`` (which packs nested latents and prepares masks in
        newer ComfyUI) with whatever extra arguments the host passes, e.g. ``latent_shapes``."""
        self.check_latent(latent_image)
        schedule = sigmas.tolist()  # read once, before the loop: the plan and the checks use it
        try:
            self.policy.check_run(sampler_name(sampler), schedule, sampler_options(sampler))
        except SettingMismatch:
            raise  # names the node and input the settings came from
        except ValueError as err:
            raise ValueError(f"{self.node_name}: {err}") from err
        family = self.model_family()
        # Which schedule step each model evaluation belongs to (guiders/guided_run.py).
        run = GuidedRun(self.policy, total_steps=max(int(sigmas.shape[-1]) - 1, 0),
                        batch_size=int(latent_image.shape[0]), family=family,
                        plan=evaluation_plan(sampler, schedule, family), schedule=schedule)

        def step_callback(step, x0, x, total_steps):
            run.step_done(step)
            if callback is not None:
                callback(step, x0, x, total_steps)

        self._guided_run = run
        self.last_record = None
        try:
            out = super().sample(noise, latent_image, sampler, sigmas, denoise_mask, step_callback,
                                 disable_pbar, seed, **host_kwargs)
        finally:
            self._guided_run = None
        try:
            self.last_record = run.finish()
        except NonFiniteEstimate as err:
            raise ValueError(f"{self.node_name}: {err}") from err
        log.info("%s: %s", self.node_name, self.last_record.summary().replace("\n", "; "))
        return out

    def model_family(self) -> str:
        """The core's name for how the model mixes x0 and noise ("eps" or "flow")."""
        return model_family(self.model_patcher.get_model_object("model_sampling"))

    def with_policy(self, policy: GuidancePolicy, node_name: str) -> "PolicyGuider":
        """A guider with the same model and prompts that runs another policy."""
        guider = PolicyGuider(self.model_patcher, policy, node_name)
        guider.original_conds = dict(self.original_conds)
        return guider

    def check_latent(self, latent_image) -> None:
        if getattr(latent_image, "is_nested", False):
            return
        latent_format = self.model_patcher.get_model_object("latent_format")
        # Image models take [batch, channels, height, width], video models add frames: a
        # latent of another rank would fail deep inside the model with a raw shape error.
        dims = getattr(latent_format, "latent_dimensions", 2)
        if latent_image.ndim != dims + 2:
            layout = "batch, channels, " + ("frames, " if dims == 3 else "") + "height, width"
            video = " (a video latent?)" if latent_image.ndim == 5 else ""
            raise ValueError(
                f"{self.node_name}: input 'latent_image' of the sampler is {latent_image.ndim}-D "
                f"(shape {tuple(latent_image.shape)}){video}, but this model takes {dims + 2}-D latents "
                f"[{layout}]. Use a latent made for this model (e.g. EmptyLatentImage or VAEEncode with its VAE).")
        expected = latent_format.latent_channels
        if latent_image.shape[1] != expected:
            got = latent_image.shape[1]
            raise ValueError(
                f"{self.node_name}: input 'latent_image' of the sampler has {got} channels "
                f"(shape {tuple(latent_image.shape)}), but this model expects {expected}. "
                f"Use a latent made for this model (e.g. EmptyLatentImage or VAEEncode with its VAE).")

    def outer_sample(self, *args, **kwargs):
        # self.model_options is already the per-sample clone made by CFGGuider.sample, so
        # the counter never leaks into the model patcher or into another run.
        run = self._guided_run

        def count_evaluations(executor, x, *a, **kw):
            run.count_evaluations(int(x.shape[0]))
            return executor(x, *a, **kw)

        comfy.patcher_extension.add_wrapper_with_key(
            comfy.patcher_extension.WrappersMP.APPLY_MODEL, NFE_WRAPPER_KEY, count_evaluations,
            self.model_options, is_model_options=True)
        self.model_options.setdefault("transformer_options", {}).update(
            run_transformer_options(self.policy, self.model_patcher))
        return super().outer_sample(*args, **kwargs)

    def predict_noise(self, x, timestep, model_options={}, seed=None, **host_kwargs):
        run = self._guided_run
        if run is None:
            raise RuntimeError(f"{self.node_name}: predict_noise was called outside of sample()")
        positive = self.conds.get("positive", None)
        negative = self.conds.get("negative", None)
        cfg_patch = model_options.get("sampler_cfg_function")
        if cfg_patch is not None and not self.policy.is_plain_cfg:
            run.record.warn(f"the model's patched CFG function (e.g. RescaleCFG) is not applied: the "
                            f"{self.policy.name} policy decides the guided estimate itself")

        def evaluate(need_uncond: bool):
            conds = [positive, negative if need_uncond else None]
            if "sampler_calc_cond_batch_function" in model_options:
                args = {"conds": conds, "input": x, "sigma": timestep, "model": self.inner_model,
                        "model_options": model_options}
                out = model_options["sampler_calc_cond_batch_function"](args)
            else:
                out = comfy.samplers.calc_cond_batch(self.inner_model, conds, x, timestep, model_options)
            for fn in model_options.get("sampler_pre_cfg_function", []):
                args = {"conds": conds, "conds_out": out, "cond_scale": self.cfg, "timestep": timestep,
                        "input": x, "sigma": timestep, "model": self.inner_model, "model_options": model_options}
                out = fn(args)
            return out[0], (out[1] if need_uncond else None)

        uncond_requested = bool(model_options.get("disable_cfg1_optimization", False))
        cond, guided = run.denoise(x, timestep, evaluate, uncond_requested)
        result = guided.denoised
        if cfg_patch is not None and self.policy.is_plain_cfg:
            result = self._patched_cfg(cfg_patch, cond, guided.uncond, x, timestep, model_options)
        # A policy that skipped uncond hands the conditional estimate on as "uncond": a
        # CFG++ sampler then re-noises with D_c, never with ComfyUI's zero placeholder.
        uncond_denoised = guided.renoise_uncond(cond)
        for fn in model_options.get("sampler_post_cfg_function", []):
            args = {"denoised": result, "cond": positive, "uncond": negative, "cond_scale": self.cfg,
                    "model": self.inner_model, "uncond_denoised": uncond_denoised, "cond_denoised": cond,
                    "sigma": timestep, "model_options": model_options, "input": x}
            result = fn(args)
        return result

    def _patched_cfg(self, cfg_patch, cond, uncond, x, timestep, model_options):
        """The model's own CFG function, called exactly as ComfyUI's ``cfg_function`` calls it
        (noise-space args, result x - f(args)); a skipped uncond is ComfyUI's zero output."""
        uncond_pred = uncond if uncond is not None else torch.zeros_like(cond)
        args = {"cond": x - cond, "uncond": x - uncond_pred, "cond_scale": self.cfg, "timestep": timestep,
                "input": x, "sigma": timestep, "cond_denoised": cond, "uncond_denoised": uncond_pred,
                "model": self.inner_model, "model_options": model_options,
                "input_cond": self.conds.get("positive", None),
                "input_uncond": self.conds.get("negative", None) if uncond is not None else None}
        return x - cfg_patch(args)


def sampler_name(sampler) -> str:
    """A SAMPLER's identity for calibration files: its sampler function's name."""
    fn = getattr(sampler, "sampler_function", None)
    return getattr(fn, "__name__", type(sampler).__name__)


def run_record(guider) -> Optional[GuidanceRecord]:
    """The record of the guider's last run, or None for a guider that is not the pack's."""
    return getattr(guider, "last_record", None) if isinstance(guider, PolicyGuider) else None


__all__ = ["PolicyGuider", "run_record"]
