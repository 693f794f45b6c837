"""Tiny random-weight SDXL, SD3, Flux and Wan 2.1 models built through ComfyUI's own classes
(``comfy.supported_models`` config -> ``comfy.model_base`` model -> ``ModelPatcher``), with
conditioning of the shapes their text encoders give. They run ComfyUI's real code paths for
each family (latent formats, model sampling, extra conds: pooled outputs, Flux's guidance,
5-D video latents); the weights say nothing about image quality."""

from __future__ import annotations

import torch

FAMILIES = ("sdxl", "sd3", "flux", "wan")


def _init(module: torch.nn.Module, seed: int) -> None:
    """ComfyUI's ops skip initialisation: fan-in uniform weights, unit norms, small biases."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in module.modules():
            norm = "Norm" in type(mod).__name__
            for name, p in mod.named_parameters(recurse=False):
                if norm:
                    p.fill_(1.0 if name in ("weight", "scale") else 0.0)
                elif p.ndim >= 2:
                    bound = 1 / p[0].numel() ** 0.5
                    p.copy_(torch.empty(p.shape).uniform_(-bound, bound, generator=g))
                else:
                    p.copy_(torch.empty(p.shape).uniform_(-0.05, 0.05, generator=g))
        # SD3's position table is a buffer ComfyUI leaves uninitialised (the weights file fills it).
        if hasattr(module, "pos_embed") and isinstance(module.pos_embed, torch.Tensor):
            module.pos_embed.copy_(torch.empty(module.pos_embed.shape).uniform_(-0.05, 0.05, generator=g))


def _config(family: str):
    import comfy.supported_models as sm

    if family == "sdxl":
        return sm.SDXL({"model_channels": 32, "use_linear_in_transformer": True, "transformer_depth": [0, 1],
                        "transformer_depth_output": [0, 0, 1, 1], "context_dim": 32, "adm_in_channels": 16 + 1536,
                        "use_temporal_attention": False, "in_channels": 4, "out_channels": 4,
                        "num_res_blocks": [1, 1], "channel_mult": [1, 2], "transformer_depth_middle": 1,
                        "num_head_channels": 16, "image_size": 32, "num_classes": "sequential",
                        "use_spatial_transformer": True, "legacy": False})
    if family == "sd3":
        return sm.SD3({"in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 2, "input_size": None,
                       "adm_in_channels": 16, "pos_embed_max_size": 16, "num_patches": 256,
                       "context_embedder_config": {"target": "torch.nn.Linear",
                                                   "params": {"in_features": 32, "out_features": 128}},
                       "pos_embed_scaling_factor": None})
    if family == "flux":
        from guidance_lab.nodes.bridge.compat import flux_network_kwargs

        # Flux's parameters differ between hosts (0.33 requires txt_ids_dims): the pack's seam.
        return sm.Flux(flux_network_kwargs({
            "image_model": "flux", "guidance_embed": True, "in_channels": 16, "out_channels": 16,
            "patch_size": 2, "vec_in_dim": 16, "context_in_dim": 32, "hidden_size": 64, "mlp_ratio": 2.0,
            "num_heads": 2, "depth": 1, "depth_single_blocks": 1, "axes_dim": [8, 12, 12], "theta": 10000,
            "qkv_bias": True}))
    if family == "wan":
        return sm.WAN21_T2V({"image_model": "wan2.1", "model_type": "t2v", "patch_size": (1, 2, 2),
                             "in_dim": 16, "dim": 64, "ffn_dim": 128, "freq_dim": 32, "text_dim": 32,
                             "out_dim": 16, "num_heads": 2, "num_layers": 1, "text_len": 8})
    raise ValueError(family)


def tiny_model(family: str, seed: int = 0):
    """(MODEL, positive, negative, latent shape) for one of FAMILIES."""
    import comfy.model_management
    import comfy.model_patcher

    config = _config(family)
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    _init(model.diffusion_model, seed)
    device = comfy.model_management.get_torch_device()
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=torch.device("cpu"))
    g = torch.Generator().manual_seed(seed + 1)
    tokens = 8 if family == "wan" else 6

    def cond(scale):
        options = {} if family == "wan" else {"pooled_output": scale * torch.randn(1, 16, generator=g)}
        return [[scale * torch.randn(1, tokens, 32, generator=g), options]]

    shape = (4, 6, 10) if family == "sdxl" else (16, 3, 6, 10) if family == "wan" else (16, 6, 10)
    return patcher, cond(1.0), cond(0.5), shape
