"""The hand-off probe's mechanics: a run handed from a model to itself is the run without one."""

from types import SimpleNamespace

import pytest
import torch

pytestmark = pytest.mark.host


def test_a_run_handed_from_a_model_to_itself_equals_the_unsplit_run(host):
    from comfy_extras.nodes_chroma_radiance import EmptyChromaRadianceLatentImage

    from guidance_lab.default_model import FLOW32
    from tools.training.evaluate import batched_conditioning, load_weights
    from tools.training.handoff_probe import handoff

    model, clip, _vae = load_weights(FLOW32)
    prompts = ["a red circle on a white background", "a blue star on a black background"]
    run = (model, *batched_conditioning(clip, prompts))
    latent = EmptyChromaRadianceLatentImage.execute(width=32, height=32, batch_size=len(prompts)).args[0]
    args = SimpleNamespace(seed=3, steps=6, cfg=4.0)
    whole = handoff(run, run, 0, latent, args)["samples"]
    for k in (2, 5):
        assert torch.allclose(handoff(run, run, k, latent, args)["samples"], whole, atol=1e-5), k
    assert not torch.allclose(whole, latent["samples"])
