"""CFG++ samplers on a real ComfyUI model: ComfyUI's own CFG++ samplers, the flow oracle,
and composition with APG and Adaptive Guidance."""

import pytest
import torch

from guidance_lab.nodes.bridge.policy_guider import PolicyGuider
from guidance_lab.nodes.bridge.samplers import pack_sampler
from guidance_lab.guiders import GuidancePolicy
from guidance_lab.guiders.cfg import CFGRun
from guidance_lab.nodes.adaptive import AdaptiveGuiderNode
from guidance_lab.nodes.apg import APGGuiderNode
from guidance_lab.nodes.cfg import CFGGuiderNode
from guidance_lab.samplers.sigma_space import alpha

from .comfy_graph import comfy_cfg, empty_latent, node_out, sample, with_family

pytestmark = pytest.mark.host
STEPS = 5


def close(a, b, tol=1e-5):
    return (a - b).abs().max().item() <= tol * max(b.abs().max().item(), 1.0)


@pytest.mark.parametrize("name", ["euler_cfg_pp", "euler_ancestral_cfg_pp", "dpmpp_2m_cfg_pp"])
@pytest.mark.parametrize("batch", [1, 3])
def test_matches_comfyui_cfg_pp_samplers_on_eps_models(fixture_model, name, batch):
    model, pos, neg = fixture_model
    ours = CFGGuiderNode.execute(model, pos, neg, 0.6).args[0]
    expected = sample(comfy_cfg(model, pos, neg, 0.6), name, STEPS, empty_latent(batch), seed=4)
    got = sample(ours, None, STEPS, empty_latent(batch), seed=4, sampler=pack_sampler(name))
    assert torch.isfinite(got).all() and close(got, expected)
    assert ours.last_record.nfe_per_step == [2.0] * STEPS


class ScheduledCFG(GuidancePolicy):
    """CFG whose scale follows a per-step list (the oracle's time-varying w_t)."""

    name = "scheduled-cfg"

    def __init__(self, scales):
        self.scales = scales

    def start(self, total_steps):
        scales = self.scales

        class Run(CFGRun):
            def guide(self, cond, uncond, step):
                self.scale = scales[step.index]
                return super().guide(cond, uncond, step)

        return Run(2.0)


@pytest.mark.parametrize("family", ["eps", "v", "flow"])
def test_cfg_pp_is_ddim_with_a_time_varying_scale_on_every_family(fixture_model, family):
    from comfy_extras import nodes_custom_sampler as cs

    base, pos, neg = fixture_model
    model = with_family(base, family)
    lam = 0.6
    fam = "flow" if family == "flow" else "eps"
    sig = node_out(cs.BasicScheduler.execute(model, "normal", STEPS, 1.0))[0].tolist()
    scales = [lam * alpha(sig[i + 1], fam) * sig[i] / (alpha(sig[i + 1], fam) * sig[i] - alpha(sig[i], fam) * sig[i + 1])
              if sig[i + 1] > 0 else lam for i in range(STEPS)]
    cfgpp = sample(CFGGuiderNode.execute(model, pos, neg, lam).args[0], None, STEPS, empty_latent(2), seed=6,
                   sampler=pack_sampler("euler_cfg_pp"))
    reference = PolicyGuider(model, ScheduledCFG(scales))
    reference.set_conds(pos, neg)
    ddim = sample(reference, None, STEPS, empty_latent(2), seed=6, sampler=pack_sampler("euler"))
    assert close(cfgpp, ddim, tol=1e-4)


def test_adaptive_guidance_with_cfg_pp_goes_conditional_only_after_the_switch(fixture_model):
    """After AG drops uncond, CFG++ re-noises with D_c: the run equals the plain
    conditional sampler from the switch on, never a 'fried' image from a zero uncond."""
    model, pos, neg = fixture_model
    inner = CFGGuiderNode.execute(model, pos, neg, 0.8).args[0]
    ag = AdaptiveGuiderNode.execute(inner, 0.0).args[0]  # switches at step 0
    got = sample(ag, None, STEPS, empty_latent(2), seed=2, sampler=pack_sampler("euler_cfg_pp"))
    assert ag.last_record.nfe_per_step == [2.0] + [1.0] * (STEPS - 1)
    assert torch.isfinite(got).all()
    # Reference: step 0 with CFG++ at 0.8, then conditional-only Euler: identical to a
    # CFG++ run whose uncond after step 0 is the conditional estimate.
    cond_only = CFGGuiderNode.execute(model, pos, neg, 1.0).args[0]
    plain = sample(cond_only, "euler", STEPS, empty_latent(2), seed=2)
    assert (got - plain).abs().max() > 0  # step 0 was guided
    assert got.abs().max() < 10 * plain.abs().max()


@pytest.mark.parametrize("family", ["eps", "flow"])
def test_apg_with_cfg_pp_runs(fixture_model, family):
    base, pos, neg = fixture_model
    model = with_family(base, family)
    apg = APGGuiderNode.execute(model, pos, neg, 0.8, "SD1.5 + CFG++", 0.0, 0.0, 0.0).args[0]
    got = sample(apg, None, STEPS, empty_latent(3), seed=2, sampler=pack_sampler("dpmpp_2m_cfg_pp"))
    assert torch.isfinite(got).all()
    assert apg.last_record.nfe_per_step == [2.0] * STEPS
