"""AGD's cross-attention adapter (Jensen & Sadat, "Adapter Guidance Distillation", TMLR 2025).

One adapter sits beside each cross-attention (attn2) block of the frozen model. It reads
the hidden states that enter that attn2 and attends, with one head, to a short token
sequence ``[w, t, prompt tokens...]`` [paper: adapter]:

- ``w``: the guidance scale as fixed random Fourier features ``cos(2 pi (f w + phi))``
  (f ~ N(0, 1), phi ~ U[0, 1], saved as buffers), then an MLP and a LayerNorm;
- ``t``: the model's timestep value (what the frozen model's own embedding takes,
  ``model_sampling.timestep(sigma)``) as a sinusoidal embedding, then a linear map. This is
  the adapter's own embedding, not the frozen model's time MLP: it keeps the adapter
  independent of how each architecture embeds time (the reference code reuses the UNet's);
- prompt tokens: a linear map of the text embedding that enters the attn2 (its context);
- a sinusoidal position encoding added to the tokens.

The output projection is zero-initialised, so an untrained adapter adds exactly zero and
leaves the model's output bit-for-bit unchanged. Pure torch, no ComfyUI.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn
import torch.nn.functional as F


@dataclass(frozen=True)
class AdapterConfig:
    """Adapter hyperparameters (the reference code's defaults are width 320, MLP 1280)."""

    width: int = 320  # d_a: adapter width of queries, keys, values and tokens
    fourier_features: int = 320  # random Fourier features of w
    mlp_hidden: int = 1280  # hidden width of the w MLP
    time_features: int = 320  # sinusoidal features of the timestep
    seed: int = 0  # draws f, phi and the initial weights

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"adapter setting {f.name} must be an integer, got {value!r}")
            if f.name != "seed" and value < 1:
                raise ValueError(f"adapter setting {f.name} must be at least 1, got {value}")
        if self.time_features % 2:
            raise ValueError(f"adapter setting time_features must be even, got {self.time_features}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "AdapterConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown adapter settings {unknown}")
        return cls(**data)


def fourier_features(scale: torch.Tensor, freq: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """[paper: adapter]: random Fourier features of the guidance scale, cos(2 pi (f w + phi)); [N] -> [N, F]."""
    return torch.cos(2 * math.pi * (scale[:, None] * freq[None, :] + phase[None, :]))


def sinusoidal_embedding(values: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer sinusoids (Vaswani et al. 2017, Sec. 3.5), as diffusion models embed time; [N] -> [N, dim]."""
    half = dim // 2
    steps = torch.arange(half, dtype=torch.float32, device=values.device)
    freqs = torch.exp(-math.log(max_period) * steps / half)
    angles = values.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class ScaleEncoder(nn.Module):
    """[paper: adapter]: the w token, Fourier features -> MLP (ReLU) -> LayerNorm."""

    def __init__(self, config: AdapterConfig, generator: torch.Generator):
        super().__init__()
        self.register_buffer("freq", torch.randn(config.fourier_features, generator=generator))
        self.register_buffer("phase", torch.rand(config.fourier_features, generator=generator))
        self.mlp = nn.Sequential(nn.Linear(config.fourier_features, config.mlp_hidden), nn.ReLU(),
                                 nn.Linear(config.mlp_hidden, config.width))
        self.norm = nn.LayerNorm(config.width)

    def forward(self, scale: torch.Tensor) -> torch.Tensor:
        """[paper: adapter], w-conditioning: [N] scales -> [N, width] tokens."""
        return self.norm(self.mlp(fourier_features(scale.to(self.freq.dtype), self.freq, self.phase)))


class CrossAttentionAdapter(nn.Module):
    """[paper: adapter]: single-head cross-attention from an attn2's input to [w, t, prompt]."""

    def __init__(self, hidden_dim: int, context_dim: int, config: AdapterConfig, generator: torch.Generator,
                 pooled_dim: int = 0):
        super().__init__()
        self.config = config
        self.scale_token = ScaleEncoder(config, generator)
        self.time_token = nn.Linear(config.time_features, config.width)
        self.prompt_tokens = nn.Linear(context_dim, config.width)
        # SDXL-style models are conditioned on a pooled text embedding (with size embeddings) as
        # well: one more token, a linear map of what the model gets as ``y``.
        self.pooled_token = nn.Linear(pooled_dim, config.width) if pooled_dim else None
        self.query = nn.Linear(hidden_dim, config.width)
        self.key = nn.Linear(config.width, config.width)
        self.value = nn.Linear(config.width, config.width)
        self.out = nn.Linear(config.width, hidden_dim)
        nn.init.zeros_(self.out.weight)  # zero-initialised: an untrained adapter adds exactly 0
        nn.init.zeros_(self.out.bias)

    def tokens(self, scale: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
               pooled: "torch.Tensor | None" = None) -> torch.Tensor:
        """[paper: adapter]: the token sequence [w, t, (pooled,) prompt...] plus position encoding;
        [N, 2 (+1) + L, width]."""
        w = self.scale_token(scale)[:, None]
        t = self.time_token(sinusoidal_embedding(timestep, self.config.time_features).to(w.dtype))[:, None]
        parts = [w, t]
        if self.pooled_token is not None:
            if pooled is None:
                raise ValueError("this adapter was made for a model with a pooled text embedding (y), and the "
                                 "model call has none")
            parts.append(self.pooled_token(pooled[:, : self.pooled_token.in_features])[:, None])
        seq = torch.cat([*parts, self.prompt_tokens(context)], dim=1)
        positions = torch.arange(seq.shape[1], device=seq.device)
        return seq + sinusoidal_embedding(positions, self.config.width + self.config.width % 2)[
            :, : self.config.width].to(seq.dtype)[None]

    def forward(self, hidden: torch.Tensor, scale: torch.Tensor, timestep: torch.Tensor,
                context: torch.Tensor, pooled: "torch.Tensor | None" = None) -> torch.Tensor:
        """[paper: adapter]: out(softmax(q k^T / sqrt(d)) v), added to attn2's output.

        hidden [N, T, hidden_dim]; scale and timestep [N]; context [N, L, context_dim]; pooled [N, >= pooled_dim]."""
        tokens = self.tokens(scale, timestep, context, pooled)
        q = self.query(hidden)[:, None]
        k, v = self.key(tokens)[:, None], self.value(tokens)[:, None]
        attended = F.scaled_dot_product_attention(q, k, v)[:, 0]
        return self.out(attended)


class BlockAttentionAdapter(CrossAttentionAdapter):
    """[paper: adapter] on a transformer block's output: the cross-attention adapter, its query read
    from every token of the hidden states the block returns (layer-normalised, as a UNet's attn2
    input is), its output added to them.

    Equation: h_out = block(h) + out(softmax(q(LN(block(h))) k^T / sqrt(d)) v), keys and values of
    [w, t, (pooled,) prompt tokens], out zero-initialised. Unlike the offset adapter it gives each
    token its own correction: CFG's correction differs across the image, and a token-independent
    offset only reaches it through the blocks after it."""

    def __init__(self, hidden_dim: int, context_dim: int, config: AdapterConfig, generator: torch.Generator,
                 pooled_dim: int = 0):
        super().__init__(hidden_dim, context_dim, config, generator, pooled_dim)
        self.hidden_norm = nn.LayerNorm(hidden_dim, elementwise_affine=False)  # no weights: the file is unchanged

    def forward(self, hidden: torch.Tensor, scale: torch.Tensor, timestep: torch.Tensor,
                context: torch.Tensor, pooled: "torch.Tensor | None" = None) -> torch.Tensor:
        """[paper: adapter], per token: [N, T, hidden_dim] to add to the block's output."""
        return super().forward(self.hidden_norm(hidden), scale, timestep, context, pooled)


class OffsetAdapter(nn.Module):
    """[paper: offset adapter] for transformer blocks (DiT, MMDiT, Flux, Wan): a token-independent offset.

    Equation: h_out = block(h) + A(w, t, c), A = out(MLP(e_w(w) + W_t e(t) + W_c mean_tokens(c) [+ W_y y])),
    out zero-initialised, so A = 0 before training (the paper's offset adapter; the reference code's
    additive adapter). The conditioning is the guidance scale (the w token of the cross-attention
    adapter), the timestep (sinusoids, as there), the mean of the prompt embedding the model gets and,
    where the model has one, its pooled text embedding; the offset is added to every token of the
    block's output hidden states."""

    def __init__(self, hidden_dim: int, context_dim: int, config: AdapterConfig, generator: torch.Generator,
                 pooled_dim: int = 0):
        super().__init__()
        self.config = config
        self.scale_token = ScaleEncoder(config, generator)
        self.time_token = nn.Linear(config.time_features, config.width)
        self.prompt_token = nn.Linear(context_dim, config.width)
        self.pooled_token = nn.Linear(pooled_dim, config.width) if pooled_dim else None
        self.hidden = nn.Linear(config.width, config.mlp_hidden)
        self.norm = nn.LayerNorm(config.mlp_hidden)
        self.out = nn.Linear(config.mlp_hidden, hidden_dim)
        nn.init.zeros_(self.out.weight)  # zero-initialised: an untrained adapter adds exactly 0
        nn.init.zeros_(self.out.bias)

    def forward(self, scale: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                pooled: "torch.Tensor | None" = None) -> torch.Tensor:
        """[paper: offset adapter]: the offset [N, 1, hidden_dim] to add to the block's output.

        scale and timestep [N]; context [N, L, context_dim] (its token mean is used); pooled [N, >= pooled_dim]."""
        c = self.scale_token(scale)
        c = c + self.time_token(sinusoidal_embedding(timestep, self.config.time_features).to(c.dtype))
        c = c + self.prompt_token(context.mean(dim=1))
        if self.pooled_token is not None:
            if pooled is None:
                raise ValueError("this adapter was made for a model with a pooled text embedding (y), and the "
                                 "model call has none")
            c = c + self.pooled_token(pooled[:, : self.pooled_token.in_features])
        return self.out(self.norm(F.relu(self.hidden(c))))[:, None]


__all__ = ["AdapterConfig", "BlockAttentionAdapter", "CrossAttentionAdapter", "OffsetAdapter", "ScaleEncoder",
           "fourier_features", "sinusoidal_embedding"]
