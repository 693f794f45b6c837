"""Tiny random-weight models of the families the pack supports, built through ComfyUI's own
classes (``comfy.supported_models`` -> ``model_base`` -> ``ModelPatcher``) with the
conditioning each one's ``extra_conds`` reads. No weights can be downloaded here; random
ones exercise the real code paths (latent layout, model sampling, conditioning, blocks).

``FAMILIES`` maps a name to the latent shape of one sample; ``tiny_model(name)`` returns
(MODEL, positive, negative). SD1.5 is the fixture checkpoint (tests/fixtures).
"""

from __future__ import annotations

import functools

import torch

# name -> (supported_models class name, unet_config, (context tokens, context width), pooled width,
#          one sample's latent shape)
_SPECS = {
    "sdxl": ("SDXL", {
        "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 32,
        "num_res_blocks": [1, 1], "channel_mult": [1, 2], "transformer_depth": [0, 1],
        "transformer_depth_output": [0, 0, 1, 1], "transformer_depth_middle": 1, "use_spatial_transformer": True,
        "use_linear_in_transformer": True, "context_dim": 32, "num_head_channels": 16, "legacy": False,
        "num_classes": "sequential", "adm_in_channels": 2816, "use_temporal_attention": False,
        "use_temporal_resblock": False}, (8, 32), 1280, (4, 8, 8)),
    "sd3": ("SD3", {
        "in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 2, "adm_in_channels": 32,
        "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 32, "out_features": 128}},
        "pos_embed_max_size": 16, "num_patches": 256, "pos_embed_scaling_factor": None, "pos_embed_offset": None,
        "qk_norm": None, "x_block_self_attn_layers": []}, (8, 32), 32, (16, 8, 8)),
    "flux": ("FluxSchnell", {
        "image_model": "flux", "guidance_embed": False, "in_channels": 16, "out_channels": 16, "vec_in_dim": 32,
        "context_in_dim": 32, "hidden_size": 64, "mlp_ratio": 2.0, "num_heads": 2, "depth": 1,
        "depth_single_blocks": 1, "axes_dim": [8, 12, 12], "theta": 10000, "patch_size": 2, "qkv_bias": True},
        (8, 32), 32, (16, 8, 8)),
    "wan": ("WAN21_T2V", {
        "image_model": "wan2.1", "model_type": "t2v", "patch_size": (1, 2, 2), "text_len": 8, "in_dim": 16,
        "dim": 64, "ffn_dim": 128, "freq_dim": 32, "text_dim": 32, "out_dim": 16, "num_heads": 2, "num_layers": 1,
        "window_size": (-1, -1), "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6}, (8, 32), None, (16, 2, 8, 8)),
    "lumina2": ("Lumina2", {
        "image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 64, "n_layers": 1, "n_refiner_layers": 1,
        "n_heads": 2, "n_kv_heads": 2, "multiple_of": 16, "ffn_dim_multiplier": 1.0, "norm_eps": 1e-5, "qk_norm": True,
        "cap_feat_dim": 32, "axes_dims": [8, 12, 12], "axes_lens": [1, 64, 64], "rope_theta": 10000.0},
        (8, 32), None, (16, 8, 8)),
}
FAMILIES = {name: spec[4] for name, spec in _SPECS.items()}
FLOW = ("sd3", "flux", "wan", "lumina2")


def _init(module: torch.nn.Module, seed: int) -> None:
    """ComfyUI's ops skip initialisation: N(0, 1/fan_in) matrices, unit norm scales, zero biases,
    small normal floating-point buffers."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / max(1, p[0].numel()) ** 0.5)
            elif name.endswith("bias") or "bias" in name.rsplit(".", 1)[-1]:
                p.zero_()
            else:
                p.fill_(1.0) if ("norm" in name or name.endswith("scale")) else p.copy_(
                    torch.randn(p.shape, generator=g) * 0.02)
        # Buffers too: SD3's pos_embed is made with torch.empty and filled only by a checkpoint,
        # so left alone it is whatever memory it got (now and then NaN, and the tests flaky).
        for _name, b in module.named_buffers():
            if b.is_floating_point():
                b.copy_(torch.randn(b.shape, generator=g) * 0.02)


def _conditioning(spec, seed: int) -> list:
    (tokens, width), pooled = spec[2], spec[3]
    g = torch.Generator().manual_seed(seed)
    options = {} if pooled is None else {"pooled_output": torch.randn(1, pooled, generator=g)}
    return [[torch.randn(1, tokens, width, generator=g), options]]


# The config entries that set how many transformer blocks a family has (SD3's width grows with it).
_BLOCK_COUNTS = {"sd3": ("depth",), "flux": ("depth", "depth_single_blocks"), "wan": ("num_layers",),
                 "lumina2": ("n_layers",)}


@functools.lru_cache(maxsize=None)
def tiny_model(name: str, blocks: int = 0):
    """(MODEL, positive, negative) of a tiny random-weight ``name`` model (see ``FAMILIES``),
    with ``blocks`` blocks of each kind where given. Shared within a test session: tests that
    patch it clone it first."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    from guidance_lab.nodes.bridge.compat import flux_network_kwargs

    spec = _SPECS[name]
    if blocks:
        config = {**spec[1], **{key: blocks for key in _BLOCK_COUNTS[name]}}
        if name == "sd3":  # MMDiT's width is 64 per block: the text projection follows it
            config["context_embedder_config"] = {"target": "torch.nn.Linear",
                                                 "params": {"in_features": 32, "out_features": 64 * blocks}}
        spec = (spec[0], config, *spec[2:])
    # Flux's parameters differ between hosts (0.33 requires txt_ids_dims): the pack's seam.
    unet_config = flux_network_kwargs(spec[1]) if spec[1].get("image_model") == "flux" else dict(spec[1])
    config = getattr(comfy.supported_models, spec[0])(unet_config)
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    _init(model.diffusion_model, seed=sum(map(ord, name)))
    model.eval()
    device = comfy.model_management.get_torch_device()
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)
    return patcher, _conditioning(spec, 1), _conditioning(spec, 2)


def latent(name: str, batch: int, seed: int = 0) -> torch.Tensor:
    """A random latent of ``batch`` samples in the family's layout (5-D for video models)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *FAMILIES[name]), generator=g)
