"""Smooth Diffusion's interpolation and ISTD nodes with ComfyUI's own sampler nodes."""

import pytest
import torch

from .comfy_graph import comfy_cfg, empty_latent, node_out

pytestmark = pytest.mark.host


def sample_frames(guider, noise, latent, steps=3):
    from comfy_extras import nodes_custom_sampler as cs

    sampler = node_out(cs.KSamplerSelect.execute("euler"))[0]
    sigmas = node_out(cs.BasicScheduler.execute(guider.model_patcher, "normal", steps, 1.0))[0]
    return node_out(cs.SamplerCustomAdvanced.execute(noise, guider, sampler, sigmas, latent))[0]["samples"]


def test_interpolated_frames_sample_and_their_ends_are_the_two_sources(fixture_model, sd15_checkpoint):
    from comfy_extras import nodes_custom_sampler as cs

    from guidance_lab.nodes.smooth_interpolation import SmoothInterpolateNode

    from .comfy_graph import encode, load_checkpoint_file

    model, _clip_pos, negative = fixture_model
    clip = load_checkpoint_file(sd15_checkpoint)[1]
    pos_a, pos_b = encode(clip, "a red circle"), encode(clip, "a blue square")
    noise_a, noise_b = node_out(cs.RandomNoise.execute(1))[0], node_out(cs.RandomNoise.execute(2))[0]
    noise, latent, conditioning = node_out(SmoothInterpolateNode.execute(
        noise_a, noise_b, empty_latent(1), pos_a, pos_b, 4))
    assert latent["samples"].shape[0] == 4 and conditioning[0][0].shape[0] == 4
    # The ends are exactly the two sources' noise and prompt ...
    one = {"samples": empty_latent(1)["samples"]}
    frames_noise = noise.generate_noise(latent)
    assert torch.equal(frames_noise[:1], noise_a.generate_noise(one))
    assert torch.equal(frames_noise[3:], noise_b.generate_noise(one))
    assert torch.equal(conditioning[0][0][:1], pos_a[0][0]) and torch.equal(conditioning[0][0][3:], pos_b[0][0])
    # ... so they sample to the two sources (up to the model's batch-size-dependent rounding).
    frames = sample_frames(comfy_cfg(model, conditioning, negative, 5.0), noise, latent)
    first = sample_frames(comfy_cfg(model, pos_a, negative, 5.0), noise_a, empty_latent(1))
    last = sample_frames(comfy_cfg(model, pos_b, negative, 5.0), noise_b, empty_latent(1))
    torch.testing.assert_close(frames[:1], first, rtol=0, atol=5e-3)
    torch.testing.assert_close(frames[3:], last, rtol=0, atol=5e-3)
    assert not torch.allclose(frames[1], frames[2])
    # The noise is made for this latent: another one (here a batch of 3) is refused, naming the input.
    from guidance_lab.nodes.validation import NodeInputError

    with pytest.raises(NodeInputError, match=r"Smooth Interpolate \(Guidance Lab\): input 'latent_image'"):
        sample_frames(comfy_cfg(model, conditioning, negative, 5.0), noise, {"samples": latent["samples"][:3]})


def test_istd_node_reports_plots_and_refuses_single_frames():
    from guidance_lab.nodes.smooth_interpolation import SmoothnessNode
    from guidance_lab.nodes.validation import NodeInputError

    frames = torch.rand(5, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    std, mean, plot = node_out(SmoothnessNode.execute(frames))
    assert std >= 0 and mean > 0 and plot.ndim == 4 and plot.shape[-1] == 3
    with pytest.raises(NodeInputError, match=r"ISTD \(Guidance Lab\): input 'frames'"):
        SmoothnessNode.execute(frames[:1])
    with pytest.raises(NodeInputError, match=r"input 'frames' are 2x2 pixels"):  # not "perfectly smooth"
        SmoothnessNode.execute(frames[:, :2, :2])


def test_interpolation_refuses_prompts_of_different_encoders(fixture_model):
    from comfy_extras import nodes_custom_sampler as cs

    from guidance_lab.nodes.smooth_interpolation import SmoothInterpolateNode
    from guidance_lab.nodes.validation import NodeInputError

    _model, positive, _negative = fixture_model
    other = [[torch.zeros(1, 77, 1024), {}]]
    noise = node_out(cs.RandomNoise.execute(1))[0]
    with pytest.raises(NodeInputError, match="input 'positive_b'"):
        SmoothInterpolateNode.execute(noise, noise, empty_latent(1), positive, other, 4)
    with pytest.raises(NodeInputError, match="input 'frames'"):
        SmoothInterpolateNode.execute(noise, noise, empty_latent(1), positive, positive, 1)
    # ConditioningCombine's output: two prompts, of which interpolation would keep one silently
    with pytest.raises(NodeInputError, match="input 'positive_a' holds 2 prompts"):
        SmoothInterpolateNode.execute(noise, noise, empty_latent(1), positive + positive, positive, 4)


def test_edict_interpolation_ends_reproduce_the_two_inverted_images(host):
    """Smooth Diffusion's image interpolation from EDICT latents: the first and last frames, sampled
    in one batch with the middle ones, are the two source latents to 1e-5 (the issue's bound)."""
    from comfy_extras import nodes_custom_sampler as cs

    from guidance_lab.nodes.default_model import DEFAULT_WEIGHTS, DefaultModelLoaderNode
    from guidance_lab.nodes.edict import EdictInvertNode, EdictSampleNode
    from guidance_lab.nodes.smooth_interpolation import EdictInterpolateNode

    from .comfy_graph import encode

    model, clip, _vae = node_out(DefaultModelLoaderNode.execute(DEFAULT_WEIGHTS))
    pos_a = encode(clip, "a red circle on a white background")
    pos_b = encode(clip, "a blue square on a black background")
    neg = encode(clip, "")
    sigmas = node_out(cs.BasicScheduler.execute(model, "normal", 6, 0.8))[0]
    gen = torch.Generator().manual_seed(3)
    src_a, src_b = ({"samples": torch.rand(1, 3, 32, 32, generator=gen)} for _ in range(2))
    edict_a = node_out(EdictInvertNode.execute(model, pos_a, neg, 3.0, sigmas, 0.93, src_a, "float64"))[0]
    edict_b = node_out(EdictInvertNode.execute(model, pos_b, neg, 3.0, sigmas, 0.93, src_b, "float64"))[0]
    edict, conditioning = node_out(EdictInterpolateNode.execute(edict_a, edict_b, pos_a, pos_b, 5))
    assert edict.shape == (5, 3, 32, 32) and conditioning[0][0].shape[0] == 5
    frames = node_out(EdictSampleNode.execute(model, conditioning, neg, 3.0, sigmas, 0.93, edict))[0]["samples"]
    assert (frames[:1] - src_a["samples"]).abs().max().item() < 1e-5
    assert (frames[4:] - src_b["samples"]).abs().max().item() < 1e-5
    # the middle frames lie between, not on the ends
    assert (frames[2] - src_a["samples"][0]).abs().max() > 0.05 and (frames[2] - src_b["samples"][0]).abs().max() > 0.05


def test_edict_interpolation_refuses_latents_of_other_settings(host):
    from comfy_extras import nodes_custom_sampler as cs

    from guidance_lab.nodes.default_model import DEFAULT_WEIGHTS, DefaultModelLoaderNode
    from guidance_lab.nodes.edict import EdictInvertNode
    from guidance_lab.nodes.smooth_interpolation import EdictInterpolateNode
    from guidance_lab.nodes.validation import NodeInputError

    from .comfy_graph import encode

    model, clip, _vae = node_out(DefaultModelLoaderNode.execute(DEFAULT_WEIGHTS))
    pos, neg = encode(clip, "a red circle on a white background"), encode(clip, "")
    latent = {"samples": torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))}
    three = node_out(cs.BasicScheduler.execute(model, "normal", 3, 0.5))[0]
    four = node_out(cs.BasicScheduler.execute(model, "normal", 4, 0.5))[0]
    a = node_out(EdictInvertNode.execute(model, pos, neg, 3.0, three, 0.93, latent, "float64"))[0]
    b = node_out(EdictInvertNode.execute(model, pos, neg, 3.0, four, 0.93, latent, "float64"))[0]
    with pytest.raises(NodeInputError, match=r"EDICT Interpolate \(Guidance Lab\): input 'edict_latent_b'.*steps"):
        EdictInterpolateNode.execute(a, b, pos, pos, 4)
    with pytest.raises(NodeInputError, match="input 'edict_latent_a'"):
        EdictInterpolateNode.execute(latent, a, pos, pos, 4)
    with pytest.raises(NodeInputError, match="input 'frames'"):
        EdictInterpolateNode.execute(a, a, pos, pos, 1)
