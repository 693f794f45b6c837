"""Every guided result of a sample is independent of the rest of its batch: each sample
of a mixed batch of 3 (guidance norms two orders of magnitude apart, so Adaptive
Guidance switches them at different steps) against the same sample run alone, for every
policy and every pack sampler, eps and flow models, on image latents (B, C, H, W), video
latents (B, C, T, H, W) and ComfyUI's packed nested latents (B, 1, N)."""

import pytest
import torch

from guidance_lab.guiders import CFGPolicy
from guidance_lab.guiders.adaptive import AdaptivePolicy
from guidance_lab.guiders.apg import APGPolicy
from guidance_lab.guiders.linear_ag import FEATURES, LinearAGPolicy

from .toy import mixed_pair, sample_policy

SIGMAS = {"eps": torch.tensor([14.0, 8.0, 5.0, 3.0, 2.0, 1.2, 0.7, 0.4, 0.2, 0.08, 0.0], dtype=torch.float64),
          "flow": torch.tensor([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0], dtype=torch.float64)}
STEPS = 10
# One sample's shape per latent layout (issue 29, item 5).
LAYOUTS = {"image": (3, 4, 4), "video": (3, 2, 4, 4), "packed": (1, 48)}
THRESHOLD = 0.999
# Any coefficients will do: what matters is that LinearAG's prediction is per sample.
COEF = torch.tensor([0.9, 0.05, 0.1, -0.05, 0.01], dtype=torch.float64).repeat(STEPS, 1)
assert COEF.shape[1] == len(FEATURES)


def linear_ag(scale):
    return LinearAGPolicy(scale, COEF, frozenset({0, 4}))


def apg(scale):
    return APGPolicy(scale, eta=0.0, norm_threshold=5.0, momentum=-0.5)


POLICIES = {
    "cfg": lambda w: CFGPolicy(w),
    "apg": apg,
    "linear_ag": linear_ag,
    "ag": lambda w: AdaptivePolicy(THRESHOLD, CFGPolicy(w)),
    "ag_x0": lambda w: AdaptivePolicy(THRESHOLD, CFGPolicy(w), space="x0"),
    "ag_eps": lambda w: AdaptivePolicy(THRESHOLD, CFGPolicy(w), space="eps"),
    "ag_apg": lambda w: AdaptivePolicy(THRESHOLD, apg(w)),
    "ag_linear_ag": lambda w: AdaptivePolicy(THRESHOLD, linear_ag(w)),
}
SAMPLERS = ["euler", "euler_cfg_pp", "euler_ancestral_cfg_pp", "dpmpp_2m_cfg_pp", "ddim_cfg_pp_inversion"]


def schedule(sampler, family):
    sigmas = SIGMAS[family]
    if sampler == "ddim_cfg_pp_inversion":
        # up to below 1 on flow models, as the host demands (nodes/bridge/samplers.flow_end_problem)
        return sigmas[1 if family == "flow" else 0:-1].flip(0)
    return sigmas


def start(sampler, family, pair):
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(pair.cond_means.shape, generator=g, dtype=torch.float64)
    if sampler == "ddim_cfg_pp_inversion":  # inversion starts from data
        return pair.cond_means + 0.1 * noise
    return noise * (SIGMAS["eps"][0] if family == "eps" else 1.0)


def noise_sampler(samples, shape=LAYOUTS["image"]):
    """Fresh noise for an ancestral step, drawn per sample so that a sample alone sees
    the same draws as inside the batch."""
    bank = torch.randn((STEPS, 3, *shape), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    draws = iter(bank[:, samples])
    return lambda z: next(draws)


def run(name, sampler, family, samples, layout="image"):
    shape = LAYOUTS[layout]
    pair = mixed_pair(family, shape)[samples]
    scale = 0.8 if "cfg_pp" in sampler else 3.0  # CFG++'s lambda lives in [0, 1]
    options = {"noise_sampler": noise_sampler(samples, shape)} if sampler == "euler_ancestral_cfg_pp" else {}
    x = start(sampler, family, mixed_pair(family, shape))[samples]
    return sample_policy(POLICIES[name](scale), pair, x, schedule(sampler, family), sampler, **options)


# AG policies whose switches this toy spreads over the run in every case.
MIXED = ("ag", "ag_x0", "ag_apg")


def assert_mixed(switch_step):
    """Some sample switched while another still had a guided step ahead: the case where
    the batch keeps evaluating uncond that the switched sample must ignore."""
    first = min(s for s in switch_step if s >= 0)
    assert first < STEPS - 1 and any(s == -1 or s > first for s in switch_step), switch_step


def rel_error(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("family", ["eps", "flow"])
@pytest.mark.parametrize("name", list(POLICIES))
def test_each_sample_alone_equals_the_same_sample_in_a_mixed_batch(name, sampler, family, layout):
    batch, record = run(name, sampler, family, [0, 1, 2], layout)
    if name in MIXED:
        assert_mixed(record.decisions["switch_step"])
    for i in range(3):
        alone, _ = run(name, sampler, family, [i], layout)
        assert rel_error(batch[i:i + 1], alone) <= 1e-6, f"sample {i}"
