"""AGD in ComfyUI: adapters injected through the attention patches of a cloned MODEL.

The one place that touches ComfyUI for AGD (the adapters themselves are ``guiders/agd``).

Injection (``comfy/ldm/modules/attention.py``, ``BasicTransformerBlock.forward``): each block
call builds one fresh ``extra_options`` dict and hands the same dict to its ``attn2_patch``
(which sees the normalised hidden states entering attn2 and the context) and to its
``attn2_output_patch`` (which may change attn2's output before the residual add). The
input patch leaves its arguments untouched and keeps them in that dict; the output patch
adds the adapter of that block (``extra_options["block"]`` and ``["block_index"]`` name it).
Both are ordinary model patches on a clone: base weights and ComfyUI's globals are never
changed, and other patches (LoRAs, other attention patches) keep working.

Per-run values travel in the run's ``transformer_options[RUN_KEY]``, never on the model:
``scale`` (float or per-sample tensor), put there by any pack guider running the AGD policy
(the AGD Guider, EDICT's guidance input, the Guidance Model Patch on the stock KSampler,
which then uses its cfg as the scale), and optionally ``model_sampling`` (to turn ComfyUI's
``sigmas`` into the model's timestep value, the adapters' t token; default: the model's at
load). Without a scale (a plain KSampler, CFG with a negative prompt) the adapters are off
and the model is the base model.
"""

from __future__ import annotations

from typing import Optional

import torch

from ...guiders.agd import AdapterSet, AGDPolicy, block_name
from ...guiders.agd.policy import RUN_KEY
from .fingerprint import base_model_fingerprint
from .policy_guider import PolicyGuider

_STASH_KEY = "guidance_lab_agd_attn2_input"
PREFIXES = {"input_blocks": "input", "middle_block": "middle", "output_blocks": "output"}


def attn2_layout(model_patcher) -> dict:
    """{block name: (hidden width, context width)} of every cross-attention of the model's UNet."""
    layout = {}
    for name, module in model_patcher.model.diffusion_model.named_modules():
        attn2 = getattr(module, "attn2", None)
        parts = name.split(".")
        if attn2 is None or parts[0] not in PREFIXES or "transformer_blocks" not in parts:
            continue
        part = PREFIXES[parts[0]]
        index = 0 if part == "middle" else int(parts[1])
        sub = int(parts[parts.index("transformer_blocks") + 1])
        layout[block_name(part, index, sub)] = (attn2.to_q.in_features, attn2.to_k.in_features)
    return layout


def architecture_of(model_patcher) -> dict:
    """What an adapter file records about the model it was made for."""
    from .samplers import model_family

    return {"model": type(model_patcher.model.diffusion_model).__name__,
            "family": model_family(model_patcher.get_model_object("model_sampling"))}


def base_parameter_count(model_patcher) -> int:
    return sum(p.numel() for p in model_patcher.model.diffusion_model.parameters())


def _per_sample(value, n: int, device) -> torch.Tensor:
    """A scalar or a [b] tensor as [n] (ComfyUI batches cond chunks as repeats of the batch)."""
    value = torch.as_tensor(value, dtype=torch.float32, device=device).reshape(-1)
    if value.numel() == n:
        return value
    if n % value.numel():
        raise ValueError(f"AGD: {value.numel()} per-sample values do not divide a batch of {n}")
    return value.repeat(n // value.numel())


class AGDAdapters:
    """The adapters of one MODEL clone, as a pair of ComfyUI attention patches."""

    def __init__(self, adapters: AdapterSet, scale_range, fingerprint: str, source: str = "",
                 model_sampling=None):
        self.adapters = adapters
        self.model_sampling = model_sampling
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.fingerprint = fingerprint
        self.source = source
        self.input_patch = _Attn2Input(self)
        self.output_patch = _Attn2Output(self)

    def to(self, target):
        """ComfyUI moves patches with ``.to(device)`` and ``.to(dtype)``: the adapters follow the
        device and stay in float32 (their output is cast to the model's dtype)."""
        if not isinstance(target, torch.dtype):
            self.adapters.to(target)
        return self

    def delta(self, n: torch.Tensor, extra_options: dict) -> Optional[torch.Tensor]:
        """The adapter output for this block call ([paper: adapter]), or None where it is off."""
        stash = extra_options.pop(_STASH_KEY, None)
        run = extra_options.get(RUN_KEY)
        if stash is None or run is None:
            return None
        hidden, context = stash
        block = extra_options.get("block")
        name = block_name(block[0], block[1], extra_options.get("block_index", 0))
        param = next(self.adapters.parameters())
        if param.device != hidden.device:
            self.adapters.to(hidden.device)
            param = next(self.adapters.parameters())
        count = hidden.shape[0]
        sigmas = _per_sample(extra_options["sigmas"], count, hidden.device)
        timestep = run.get("model_sampling", self.model_sampling).timestep(sigmas).float()
        scale = _per_sample(run["scale"], count, hidden.device)
        out = self.adapters(name, hidden.to(param.dtype), scale, timestep, context.to(param.dtype))
        return out.to(n.dtype)


class _Attn2Input:
    def __init__(self, owner: AGDAdapters):
        self.owner = owner

    def __call__(self, n, context, value, extra_options):
        block = extra_options.get("block")
        if RUN_KEY in extra_options and block is not None and context is not None:
            if block_name(block[0], block[1], extra_options.get("block_index", 0)) in self.owner.adapters:
                extra_options[_STASH_KEY] = (n, context)
        return n, context, value

    def to(self, target):
        self.owner.to(target)
        return self


class _Attn2Output:
    def __init__(self, owner: AGDAdapters):
        self.owner = owner

    def __call__(self, n, extra_options):
        delta = self.owner.delta(n, extra_options)
        return n if delta is None else n + delta

    def to(self, target):
        self.owner.to(target)
        return self


def find_adapters(model_patcher) -> Optional[AGDAdapters]:
    """The AGD adapters patched into this MODEL, or None."""
    patches = model_patcher.model_options.get("transformer_options", {}).get("patches", {})
    for patch in patches.get("attn2_output_patch", []):
        if isinstance(patch, _Attn2Output):
            return patch.owner
    return None


def check_fits(model_patcher, adapters: AdapterSet, fingerprint: str) -> None:
    """ValueError unless the adapters were made for this model's base weights and layout."""
    ours = base_model_fingerprint(model_patcher)
    if ours != fingerprint:
        raise ValueError(f"the adapter was trained on base model {fingerprint}, but this model is {ours} "
                         "(other weights or prediction type); use the model it was trained on, or train "
                         "an adapter for this one")
    layout = attn2_layout(model_patcher)
    if layout != adapters.layout:
        raise ValueError(f"the adapter's blocks {sorted(adapters.layout)[:4]} do not match this model's "
                         f"cross-attention blocks {sorted(layout)[:4]}")


def apply_adapters(model_patcher, adapters: AdapterSet, scale_range, fingerprint: str, source: str = ""):
    """A clone of the MODEL with the adapters in its attention patches (the base is untouched)."""
    if find_adapters(model_patcher) is not None:
        raise ValueError("this model already has AGD adapters; load adapters onto the model without them")
    check_fits(model_patcher, adapters, fingerprint)
    patched = model_patcher.clone()
    agd = AGDAdapters(adapters.eval().requires_grad_(False), scale_range, fingerprint, source,
                      model_sampling=patched.get_model_object("model_sampling"))
    patched.set_model_attn2_patch(agd.input_patch)
    patched.set_model_attn2_output_patch(agd.output_patch)
    return patched


def run_options(scale, model_patcher) -> dict:
    """The per-run value the adapters read from ``transformer_options[RUN_KEY]``."""
    return {"scale": scale, "model_sampling": model_patcher.get_model_object("model_sampling")}


def adapted_call(model_patcher, agd: AGDAdapters, x, sigma, context, scale):
    """One evaluation of the frozen model with the adapters at per-sample ``scale``, outside a
    sampler (training): the model's ``apply_model`` with the patches in its transformer options."""
    options = {"patches": {"attn2_patch": [agd.input_patch], "attn2_output_patch": [agd.output_patch]},
               "sigmas": sigma, RUN_KEY: run_options(scale, model_patcher)}
    return model_patcher.model.apply_model(x, sigma, c_crossattn=context, transformer_options=options)


class AGDGuider(PolicyGuider):
    """Samples the conditional branch only, with the scale fed to the adapters: 1 NFE per step.
    The scale reaches the adapters through ``AGDPolicy.transformer_options``, which
    ``PolicyGuider`` puts in its per-run options clone (never on the shared MODEL)."""

    def __init__(self, model_patcher, policy: AGDPolicy, node_name: str = "AGD Guider (Guidance Lab)"):
        super().__init__(model_patcher, policy, node_name)

    def set_positive(self, positive) -> None:
        """The prompt alone: AGD has no negative (it distils CFG against the empty prompt)."""
        self.inner_set_conds({"positive": positive})


__all__ = ["AGDAdapters", "AGDGuider", "RUN_KEY", "adapted_call", "apply_adapters", "architecture_of",
           "attn2_layout", "base_parameter_count", "check_fits", "find_adapters", "run_options"]
