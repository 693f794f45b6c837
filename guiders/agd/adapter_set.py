"""The adapters of one model: one per cross-attention block, keyed by a stable block name.

A block name is ``<part>_<index>_<sub>``, e.g. ``input_7_0``: the UNet part and block index
that ComfyUI reports while the block runs (``transformer_options["block"]``) and the
transformer block's index inside it (``block_index``). The layout (name -> hidden width,
context width) is what the adapter file records as its architecture.
"""

from __future__ import annotations

import torch
from torch import nn

from .adapter import AdapterConfig, CrossAttentionAdapter


def block_name(part: str, index: int, sub: int) -> str:
    """The stable name of a cross-attention block ([paper: adapter]: one adapter per attn2)."""
    return f"{part}_{int(index)}_{int(sub)}"


class AdapterSet(nn.Module):
    """[paper: adapter]: one ``CrossAttentionAdapter`` per attn2 block of the frozen model."""

    def __init__(self, layout: dict, config: AdapterConfig):
        super().__init__()
        if not layout:
            raise ValueError("the layout lists no cross-attention blocks to put adapters on")
        self.config = config
        self.layout = {name: (int(h), int(c)) for name, (h, c) in sorted(layout.items())}
        generator = torch.Generator().manual_seed(config.seed)
        # The initial weights are a function of the seed alone (every DDP rank, every resume).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.adapters = nn.ModuleDict({
                name: CrossAttentionAdapter(h, c, config, generator) for name, (h, c) in self.layout.items()})

    def __contains__(self, name: str) -> bool:
        return name in self.adapters

    def forward(self, name: str, hidden: torch.Tensor, scale: torch.Tensor, timestep: torch.Tensor,
                context: torch.Tensor) -> torch.Tensor:
        """The adapter output to add to block ``name``'s attn2 output ([paper: adapter])."""
        return self.adapters[name](hidden, scale, timestep, context)

    def parameter_count(self) -> int:
        """Trainable parameters (the fixed Fourier buffers are not counted)."""
        return sum(p.numel() for p in self.parameters())

    def flat_state_dict(self) -> dict:
        """``{"<block>.<tensor>": tensor}``, contiguous CPU tensors: safetensors-ready."""
        return {k: v.detach().to("cpu").contiguous() for k, v in self.adapters.state_dict().items()}

    def load_flat_state_dict(self, tensors: dict) -> None:
        """The inverse of ``flat_state_dict``; ValueError naming what is missing or misshapen."""
        own = self.adapters.state_dict()
        missing = sorted(set(own) - set(tensors))
        extra = sorted(set(tensors) - set(own))
        if missing or extra:
            raise ValueError(f"the adapter tensors do not fit the recorded layout (missing {missing[:3]}, "
                             f"unexpected {extra[:3]})")
        for key, value in own.items():
            if tuple(tensors[key].shape) != tuple(value.shape):
                raise ValueError(f"adapter tensor {key} has shape {tuple(tensors[key].shape)}, the layout "
                                 f"needs {tuple(value.shape)}")
        self.adapters.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()})


def relative_size(adapters: AdapterSet, base_parameters: int) -> float:
    """Adapter parameters as a percentage of the frozen model's (the paper reports ~2%)."""
    return 100.0 * adapters.parameter_count() / max(int(base_parameters), 1)


__all__ = ["AdapterSet", "block_name", "relative_size"]
