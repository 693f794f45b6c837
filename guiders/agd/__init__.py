"""AGD, adapter guidance distillation (Jensen & Sadat, TMLR 2025): pure torch, no ComfyUI.

``adapter``: one cross-attention adapter (UNets) or offset adapter (transformer blocks);
``adapter_set``: the adapters of a model, keyed by block; ``adapter_file``: the safetensors
file; ``policy``: 1-NFE sampling at scale w; ``training``: loss, schedule, batches;
``trajectories``: the training data on disk.

Docstrings name what they implement by the paper's parts (its arXiv and TMLR versions
number sections differently): [paper: adapter] the cross-attention adapter and its
w / t / prompt tokens; [paper: offset adapter] the token-independent adapter of transformer
blocks; [paper: sampling] one forward pass per step at scale w;
[paper: CFG-trajectory training] the distillation loss on states of CFG-guided
trajectories; [paper: training] its training set-up; [reference code: schedule]
settings read in cristianpjensen/agd.
The host side (injection through ComfyUI's attention patches and block replacement) is
``nodes/bridge/agd.py``.
"""

from .adapter import (AdapterConfig, BlockAttentionAdapter, CrossAttentionAdapter, OffsetAdapter, ScaleEncoder,
                      fourier_features, sinusoidal_embedding)
from .adapter_set import TRANSFORMER_KINDS, AdapterSet, block_name, relative_size
from .policy import AGDPolicy, check_scale

__all__ = ["AdapterConfig", "BlockAttentionAdapter", "CrossAttentionAdapter", "OffsetAdapter", "ScaleEncoder",
           "fourier_features", "sinusoidal_embedding", "TRANSFORMER_KINDS",
           "AdapterSet", "block_name", "relative_size", "AGDPolicy", "check_scale"]
