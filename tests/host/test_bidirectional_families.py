"""BDIA / O-BELM round trips through the nodes on tiny random-weight SDXL, SD3, Flux and Wan 2.1
models built through ComfyUI's own classes (tiny_families.py): each family's latent format,
model sampling and conditioning, 4-D and 5-D latents, odd and even steps (5, 6, 49, 50), batch 1
and 3, partial denoise."""

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
@pytest.mark.parametrize("batch, steps, denoise", [(1, 5, 1.0), (3, 6, 1.0), (1, 49, 1.0), (3, 50, 1.0),
                                                   (3, 6, 0.6)])
def test_round_trip_is_exact_on_every_family(models, method, family, batch, steps, denoise):
    from comfy_extras import nodes_custom_sampler as cs

    model, pos, neg, shape = models[family]
    sigmas = node_out(cs.BasicScheduler.execute(model, "simple", steps, denoise))[0]
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


@pytest.fixture(scope="module")
def default_models(host):
    from guidance_lab.default_model import SHIPPED, WEIGHTS_DIR
    from guidance_lab.nodes.bridge.default_model import load_default_model

    from .comfy_graph import encode

    loaded = {}
    for name in SHIPPED:
        model, clip, _, _ = load_default_model(WEIGHTS_DIR / name)
        loaded[name] = (model, encode(clip, "a red circle on a white background"), encode(clip, ""))
    return loaded


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("batch, steps, denoise", [(1, 5, 1.0), (3, 50, 1.0), (3, 49, 0.6)])
def test_round_trip_is_exact_on_the_default_models(default_models, method, batch, steps, denoise):
    """The shipped models in their own families (v-prediction, flow), on their 3 x 32 x 32 latents."""
    from comfy_extras import nodes_custom_sampler as cs

    for model, pos, neg in default_models.values():
        sigmas = node_out(cs.BasicScheduler.execute(model, "normal", steps, denoise))[0]
        latent = {"samples": torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1}
        pair = node_out(BidirectionalInvertNode.execute(model, pos, neg, CFG, sigmas, method, 0.96, latent,
                                                        "float64"))[0]
        guider = build_guider("test", model, pos, neg, lambda: edict_policy("test", CFG, None, model))
        _, final = bidirectional_sample(guider, pair)
        start = model.get_model_object("latent_format").process_in(latent["samples"]).double()
        err = ((final[1].cpu() - start).abs().max() / start.abs().max()).item()
        assert err <= 1e-6, err


@pytest.mark.parametrize("family", FAMILIES)
def test_an_empty_latent_is_refused_where_the_latent_format_shifts_it(models, family):
    """ComfyUI leaves an all-zero latent out of the model's space; on a shifting latent format
    (SD3, Flux) the inversion would start from the wrong place, so the node refuses it."""
    from comfy_extras import nodes_custom_sampler as cs

    from guidance_lab.nodes.validation import NodeInputError

    model, pos, neg, shape = models[family]
    sigmas = node_out(cs.BasicScheduler.execute(model, "simple", 5, 1.0))[0]
    empty = {"samples": torch.zeros(1, *shape)}
    shifts = bool(model.get_model_object("latent_format").process_in(empty["samples"]).any())
    if shifts:
        with pytest.raises(NodeInputError, match="input 'latent_image' is all zeros"):
            BidirectionalInvertNode.execute(model, pos, neg, CFG, sigmas, "o_belm", 0.96, empty, "float64")
    else:
        node_out(BidirectionalInvertNode.execute(model, pos, neg, CFG, sigmas, "o_belm", 0.96, empty, "float64"))

