"""Training-only helpers for the default model's networks: initialisation and export.

The loader (``nodes/bridge/default_model.py``) builds and reads the networks; what only the
trainer needs lives here.
"""

from __future__ import annotations

import torch

from guidance_lab.nodes.bridge.default_model import TOKEN_TABLE_KEY, TOKEN_TABLE_STD


def init_weights(module: torch.nn.Module, generator: torch.Generator) -> None:
    """ComfyUI's ops skip initialisation: give every parameter torch's default init."""
    for m in module.modules():
        params = [p for p in m.parameters(recurse=False)]
        if not params:
            continue
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv1d, torch.nn.Conv3d)):
            fan_in = m.weight[0].numel()
            bound = 1 / fan_in ** 0.5
            with torch.no_grad():
                m.weight.uniform_(-bound, bound, generator=generator)
                if m.bias is not None:
                    m.bias.uniform_(-bound, bound, generator=generator)
        elif isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
            with torch.no_grad():
                if m.weight is not None:
                    m.weight.fill_(1.0)
                if m.bias is not None:
                    m.bias.zero_()
        elif "RMSNorm" in type(m).__name__:
            with torch.no_grad():
                for p in params:
                    p.fill_(1.0)
        elif isinstance(m, torch.nn.Embedding):
            with torch.no_grad():
                m.weight.normal_(0, TOKEN_TABLE_STD, generator=generator)
        else:
            with torch.no_grad():
                for p in params:
                    p.zero_()


def zero_init_dit(flux: torch.nn.Module) -> None:
    """adaLN-Zero (Peebles and Xie 2023, DiT section 3.2): every block's modulation and the final
    layer start at zero, so each block starts as the identity and the output as zero."""
    for name, m in flux.named_modules():
        last = name.rsplit(".", 1)[-1]
        zero = (last == "lin" and name.endswith(("mod.lin", "modulation.lin"))) or name == "final_layer.linear" \
            or name.startswith("final_layer.adaLN_modulation")
        if zero and isinstance(m, torch.nn.Linear):
            with torch.no_grad():
                m.weight.zero_()
                if m.bias is not None:
                    m.bias.zero_()


def dataset_token_ids(tokenizer, prompts) -> list:
    """Sorted ids of every token the prompts use (with BOS/EOS/pad)."""
    ids = set()
    for prompt in prompts:
        for chunk in tokenizer.tokenize_with_weights(prompt)["l"]:
            ids.update(int(t) for t, _w in chunk)
    return sorted(ids)


def export_state_dict(unet: torch.nn.Module, text_encoder, text_config: dict, token_ids) -> dict:
    """Tensors to store: the UNet, the text encoder minus its token table, and its used rows."""
    from guidance_lab.nodes.bridge.compat import flux_state_dict_canonical

    network_sd = unet.state_dict()
    if type(unet).__name__ == "Flux":
        network_sd = flux_state_dict_canonical(network_sd)
    out = {f"diffusion_model.{k}": v for k, v in network_sd.items()}
    table_key = TOKEN_TABLE_KEY
    clip_sd = text_encoder.clip_l.state_dict()
    for k, v in clip_sd.items():
        if k == table_key:
            continue
        out[f"text_encoder.{k}"] = v
    ids = torch.tensor(sorted(token_ids), dtype=torch.int64)
    out["text_encoder.token_ids"] = ids
    out["text_encoder.token_rows"] = clip_sd[table_key][ids]
    return out
