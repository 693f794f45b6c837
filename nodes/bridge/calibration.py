"""LinearAG calibration through ComfyUI's sampling: full-CFG runs that accumulate the fit."""

from __future__ import annotations

import json

import comfy.utils
import torch
from comfy_extras.nodes_custom_sampler import Noise_RandomNoise

from ...guiders import linear_ag_file
from ...guiders.linear_ag import CalibrationPolicy, NormalEquations
from ..validation import NodeInputError
from .compat import fix_empty_latent
from .fingerprint import model_fingerprint
from .policy_guider import PolicyGuider, sampler_name
from .samplers import sampler_options


def calibrate_linear_ag(model, positive, negative, sampler, sigmas, latent_image: dict, cfg: float,
                        runs: int, first_seed: int, ridge: float,
                        node_name: str) -> linear_ag_file.Calibration:
    """Run CFG ``runs`` times (seeds first_seed...) and fit LinearAG's per-step coefficients."""
    steps = len(sigmas) - 1
    # Read before the runs: a sampler may write into the schedule (uni_pc sets the last sigma).
    schedule = sigmas.tolist()
    equations = NormalEquations(steps)
    guider = PolicyGuider(model, CalibrationPolicy(float(cfg), equations), node_name=node_name)
    guider.set_conds(positive, negative)
    latent = fix_empty_latent(model, latent_image)
    bar = comfy.utils.ProgressBar(runs * steps)
    for run in range(runs):
        noise = Noise_RandomNoise(first_seed + run).generate_noise({"samples": latent})
        guider.sample(noise, latent, sampler, sigmas, callback=lambda *a: bar.update(1),
                      disable_pbar=True, seed=first_seed + run)
    try:
        # The report's fit: every step predicted from the step before it.
        coefficients, residuals = equations.solve(float(ridge))
    except ValueError as err:
        raise ValueError(f"{node_name}: {err}") from err
    if not (torch.isfinite(coefficients).all() and torch.isfinite(residuals).all()):
        # Never saved: a non-finite fit would replace a calibration with garbage.
        raise NodeInputError(node_name, "ridge", f"= {ridge} gave a non-finite fit; raise it (e.g. 1e-4) "
                             "or check that the model's estimates are finite")
    return linear_ag_file.Calibration(
        equations, residuals, sampler_name(sampler), schedule, float(cfg),
        guider.model_family(), model_fingerprint(model), float(ridge),
        {"seeds": json.dumps([first_seed, first_seed + runs - 1]), "runs": runs},
        sampler_options(sampler))
