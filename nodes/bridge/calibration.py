"""LinearAG calibration through ComfyUI's sampling: full-CFG runs that accumulate the fit."""

from __future__ import annotations

import json

import comfy.sample
import comfy.utils
from comfy_extras.nodes_custom_sampler import Noise_RandomNoise

from ...guiders import linear_ag_file
from ...guiders.linear_ag import CalibrationPolicy, NormalEquations
from .fingerprint import model_fingerprint
from .policy_guider import PolicyGuider, sampler_name


def calibrate_linear_ag(model, positive, negative, sampler, sigmas, latent_image: dict, cfg: float,
                        runs: int, first_seed: int, ridge: float,
                        node_name: str) -> linear_ag_file.Calibration:
    """Run CFG ``runs`` times (seeds first_seed...) and fit LinearAG's per-step coefficients."""
    steps = len(sigmas) - 1
    equations = NormalEquations(steps)
    guider = PolicyGuider(model, CalibrationPolicy(float(cfg), equations), node_name=node_name)
    guider.set_conds(positive, negative)
    latent = comfy.sample.fix_empty_latent_channels(model, latent_image["samples"])
    bar = comfy.utils.ProgressBar(runs * steps)
    for run in range(runs):
        noise = Noise_RandomNoise(first_seed + run).generate_noise({"samples": latent})
        guider.sample(noise, latent, sampler, sigmas, callback=lambda *a: bar.update(1),
                      disable_pbar=True, seed=first_seed + run)
    coefficients, residuals = equations.solve(float(ridge))
    return linear_ag_file.Calibration(
        coefficients, residuals, sampler_name(sampler), sigmas.tolist(), float(cfg),
        guider.model_family(), model_fingerprint(model),
        {"ridge": float(ridge), "seeds": json.dumps([first_seed, first_seed + runs - 1]), "runs": runs})
