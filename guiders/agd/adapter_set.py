"""The adapters of one model: one per adapted block, keyed by a stable block name.

Three kinds ([paper: adapter], [paper: offset adapter]):

- ``cross_attention`` (UNets): one ``CrossAttentionAdapter`` per attn2 block. A block name is
  ``<part>_<index>_<sub>``, e.g. ``input_7_0``: the UNet part and block index that ComfyUI
  reports while the block runs (``transformer_options["block"]``) and the transformer block's
  index inside it (``block_index``). Layout entry: (hidden width, context width) or, for a
  model with a pooled text embedding (SDXL), (hidden, context, pooled width).
- ``offset`` (transformers): one ``OffsetAdapter`` per transformer block, named
  ``<block type>_<index>`` (``double_block_3``, ``single_block_0``: the keys of ComfyUI's
  block replacement). Layout entry: (hidden width, context width, pooled width or 0).
- ``block_attention`` (transformers): one ``BlockAttentionAdapter`` per transformer block, the
  same names and layout as ``offset``: a cross-attention adapter whose query is each token the
  block returns, so each token gets its own correction.

The layout and the kind are what the adapter file records as its architecture.
"""

from __future__ import annotations

import torch
from torch import nn

from .adapter import AdapterConfig, BlockAttentionAdapter, CrossAttentionAdapter, OffsetAdapter

KINDS = ("cross_attention", "offset", "block_attention")
TRANSFORMER_KINDS = ("offset", "block_attention")  # one adapter per transformer block, added to its output
ADAPTER_CLASSES = {"cross_attention": CrossAttentionAdapter, "offset": OffsetAdapter,
                   "block_attention": BlockAttentionAdapter}


def block_name(part: str, index: int, sub: int) -> str:
    """The stable name of a cross-attention block ([paper: adapter]: one adapter per attn2)."""
    return f"{part}_{int(index)}_{int(sub)}"


def _entry(name: str, dims, kind: str) -> tuple:
    dims = tuple(int(d) for d in dims)
    if kind == "cross_attention" and len(dims) == 3 and dims[2] == 0:
        dims = dims[:2]  # no pooled embedding: the SD1.x layout files have always recorded
    if len(dims) not in ((2, 3) if kind == "cross_attention" else (3,)) or min(dims[:2]) < 1 or min(dims) < 0:
        raise ValueError(f"the layout of block {name} is {list(dims)}, not (hidden, context[, pooled]) widths "
                         f"for {kind} adapters")
    return dims


class AdapterSet(nn.Module):
    """[paper: adapter]: one adapter per adapted block of the frozen model (attn2 blocks of a UNet,
    transformer blocks of a DiT)."""

    def __init__(self, layout: dict, config: AdapterConfig, kind: str = "cross_attention"):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"adapter kind must be one of {KINDS}, got {kind!r}")
        if not layout:
            raise ValueError("the layout lists no blocks to put adapters on")
        self.config = config
        self.kind = kind
        self.layout = {name: _entry(name, dims, kind) for name, dims in sorted(layout.items())}
        generator = torch.Generator().manual_seed(config.seed)
        make = ADAPTER_CLASSES[kind]
        # The initial weights are a function of the seed alone (every DDP rank, every resume).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.adapters = nn.ModuleDict({
                name: make(dims[0], dims[1], config, generator, pooled_dim=dims[2] if len(dims) > 2 else 0)
                for name, dims in self.layout.items()})

    def __contains__(self, name: str) -> bool:
        return name in self.adapters

    def forward(self, name: str, hidden: "torch.Tensor | None", scale: torch.Tensor, timestep: torch.Tensor,
                context: torch.Tensor, pooled: "torch.Tensor | None" = None) -> torch.Tensor:
        """The adapter output to add to block ``name``'s attn2 output ([paper: adapter]) or, for
        transformer adapters, to its output hidden states ``hidden`` ([paper: offset adapter]: unused)."""
        if self.kind == "offset":
            return self.adapters[name](scale, timestep, context, pooled)
        return self.adapters[name](hidden, scale, timestep, context, pooled)

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


__all__ = ["ADAPTER_CLASSES", "AdapterSet", "KINDS", "TRANSFORMER_KINDS", "block_name", "relative_size"]
