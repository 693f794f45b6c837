"""BDIA / O-BELM round trips through the nodes on tiny random-weight SDXL, SD3, Flux and Wan 2.1
models built through ComfyUI's own classes (tiny_families.py): each family's latent format,
model sampling and conditioning, 4-D and 5-D latents, odd and even steps, batch 1 and 3."""

import pytest
import torch

from guidance_lab.nodes.bidirectional import BidirectionalInvertNode, BidirectionalSampleNode
from guidance_lab.nodes.bridge.bidirectional import bidirectional_sample
from guidance_lab.nodes.edict import edict_policy
from guidance_lab.nodes.guider_common import build_guider
from guidance_lab.samplers.bidirectional import METHODS

from .comfy_graph import node_out
from .tiny_families import FAMILIES, tiny_model

pytestmark = pytest.mark.host
CFG = 3.0


@pytest.fixture(scope="module")
def models(host):
    return {family: tiny_model(family) for family in FAMILIES}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("batch, steps", [(1, 5), (3, 6)])
def test_round_trip_is_exact_on_every_family(models, method, family, batch, steps, request):
    from comfy_extras import nodes_custom_sampler as cs

    if (family, method) == ("wan", "o_belm"):
        # Measured 1.08e-6 at batch 1 / 5 steps (issue 32, open): cause not found yet, probably a
        # float32 cast of the 5-D state inside Wan, like the flow first-step tie fixed in the core.
        request.applymarker(pytest.mark.xfail(strict=False, reason="O-BELM on Wan round-trips at ~1.1e-6"))

    model, pos, neg, shape = models[family]
    sigmas = node_out(cs.BasicScheduler.execute(model, "simple", steps, 1.0))[0]
    latent = {"samples": torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0))}
    pair, preview = node_out(BidirectionalInvertNode.execute(model, pos, neg, CFG, sigmas, method, 0.96, latent,
                                                             "float64"))
    assert pair.family == ("eps" if family == "sdxl" else "flow") and pair.shape == (batch, *shape)
    assert torch.isfinite(preview["samples"]).all()
    guider = build_guider("test", model, pos, neg, lambda: edict_policy("test", CFG, None, model))
    _, final = bidirectional_sample(guider, pair)
    start = model.get_model_object("latent_format").process_in(latent["samples"]).double()
    err = ((final[1].cpu() - start).abs().max() / start.abs().max()).item()
    assert err <= 1e-6, err
    out = node_out(BidirectionalSampleNode.execute(model, pos, neg, CFG, sigmas, method, 0.96, pair))[0]["samples"]
    assert out.shape == latent["samples"].shape and torch.isfinite(out).all()
