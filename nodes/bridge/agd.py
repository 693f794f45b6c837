"""AGD in ComfyUI: adapters injected through ComfyUI's extension points on a cloned MODEL.

The one place that touches ComfyUI for AGD (the adapters themselves are ``guiders/agd``).
Nothing here edits a weight or a ComfyUI global: every hook is a model patch or a wrapper on
the clone the loader returns (or, in training, in the one call's own transformer options).

UNets (SD1.x, SD2.x, SDXL), cross-attention adapters (``comfy/ldm/modules/attention.py``,
``BasicTransformerBlock.forward``): each block call builds one fresh ``extra_options`` dict and
hands the same dict to its ``attn2_patch`` (which sees the normalised hidden states entering
attn2 and the context) and to its ``attn2_output_patch`` (which may change attn2's output
before the residual add). The input patch leaves its arguments untouched and keeps them in
that dict; the output patch adds the adapter of that block (``extra_options["block"]`` and
``["block_index"]`` name it).

Transformers (Flux's double and single stream blocks, SD3's MMDiT joint blocks, Wan's blocks),
offset adapters: ``transformer_options["patches_replace"]["dit"][(block type, index)]``, the
block replacement these models' forwards offer, calls the original block and adds the
adapter's offset to the hidden states it returns (``img``; for Flux's single stream blocks the
joint text+image sequence). A replacement another node put there first is called in place of
the original block, so both apply. Lumina 2 (NextDiT) offers no block replacement; where the
host's NextDiT calls ``transformer_options["patches"]["double_block"]`` after each of its main
layers (ComfyUI 0.33; 0.3.75's does not), that post-block patch adds the offset to the layer's
image tokens, as the replacement does for the other transformers. The ``block_attention`` kind
(a cross-attention adapter per block, its query each token the block returned) goes through the
same hooks and adds its per-token output where the offset adapter adds one vector.

Both kinds read the model call's conditioning from an ``APPLY_MODEL`` wrapper
(``comfy/model_base.py``, the same for every family), which hands the call's prompt embedding
(``c_crossattn``) and pooled embedding (``y``: SDXL's pooled text and size embedding, SD3's and
Flux's pooled CLIP output) on in a copy of the call's transformer options.

Per-run values travel in the run's ``transformer_options[RUN_KEY]``, never on the model:
``scale`` (float or per-sample tensor), put there by any pack guider running the AGD policy
(the AGD Guider, EDICT's guidance input, the Guidance Model Patch on the stock KSampler,
which then uses its cfg as the scale), and optionally ``model_sampling`` (to turn ComfyUI's
``sigmas`` into the model's timestep value, the adapters' t token; default: the model's at
load). Without a scale (a plain KSampler, CFG with a negative prompt) the adapters are off
and the model is the base model.
"""

from __future__ import annotations

import types
from typing import Optional

import torch
from torch.utils.checkpoint import checkpoint

from ...guiders.agd import TRANSFORMER_KINDS, AdapterSet, AGDPolicy, block_name
from ...guiders.agd.policy import RUN_KEY
from ...guiders.agd.trajectories import TEXT_TOKENS
from .fingerprint import base_model_fingerprint
from .policy_guider import PolicyGuider

_STASH_KEY = "guidance_lab_agd_attn2_input"
COND_KEY = "guidance_lab_agd_conditioning"  # the model call's prompt and pooled embeddings
WRAPPER_KEY = "guidance_lab_agd_conditioning"
PREFIXES = {"input_blocks": "input", "middle_block": "middle", "output_blocks": "output"}
# The transformer classes whose forward calls patches_replace["dit"] with these block types
# (read in comfy/ldm/flux/model.py, modules/diffusionmodules/mmdit.py, wan/model.py of
# ComfyUI 0.3.75 and 0.33), by the architecture name an adapter file records.
DIT_FAMILIES = {"Flux": "flux", "OpenAISignatureMMDITWrapper": "mmdit", "WanModel": "wan"}
ARCHITECTURE_NAMES = {"unet": "UNet (SD1.x / SD2.x / SDXL)", "flux": "Flux", "mmdit": "SD3 (MMDiT)",
                      "wan": "Wan 2.1", "nextdit": "Lumina 2 (NextDiT)"}
# Transformers whose blocks AGD reaches through the post-block patch where the host's forward calls it.
POST_BLOCK_FAMILIES = {"NextDiT": "nextdit"}
# Transformers ComfyUI runs without a block hook: why AGD cannot serve them.
NO_HOOK = {"NextDiT": "Lumina 2 / NextDiT"}


def calls_post_block_patch(network_class) -> bool:
    """Whether this network class's forward calls ``patches["double_block"]`` after its blocks (read
    from the host's own code: ComfyUI 0.33's NextDiT does, 0.3.75's does not)."""
    import inspect

    try:
        source = inspect.getsource(network_class._forward)
    except (AttributeError, OSError, TypeError):
        return False
    return '"double_block" in patches' in source


def architecture_name(model_patcher) -> str:
    """``unet``, ``flux``, ``mmdit``, ``wan``, ``nextdit``, or the network's class name where AGD has no adapters."""
    network = model_patcher.model.diffusion_model
    if any(True for _ in _attn2_modules(network)):
        return "unet"
    name = type(network).__name__
    if name in POST_BLOCK_FAMILIES and calls_post_block_patch(type(network)):
        return POST_BLOCK_FAMILIES[name]
    return DIT_FAMILIES.get(name, name)


def _attn2_modules(network):
    for name, module in network.named_modules():
        attn2 = getattr(module, "attn2", None)
        parts = name.split(".")
        if attn2 is None or parts[0] not in PREFIXES or "transformer_blocks" not in parts:
            continue
        yield name, parts, attn2


def unsupported_reason(model_patcher) -> str:
    """Why AGD has no adapters for this model ("" where it has), true to the host's code."""
    arch = architecture_name(model_patcher)
    if arch == "unet" or arch in ARCHITECTURE_NAMES:
        return ""
    network = type(model_patcher.model.diffusion_model).__name__
    if network in NO_HOOK:
        return (f"is a {NO_HOOK[network]} model ({network}), whose transformer blocks offer neither the "
                "block-replacement hook (transformer_options patches_replace 'dit'), the post-block patch "
                "(patches 'double_block') nor the cross-attention patch hooks in this ComfyUI, the extension "
                "points AGD's adapters are injected through; update ComfyUI (0.33's NextDiT calls the "
                "post-block patch). AGD supports SD1.x/SD2.x/SDXL UNets, SD3 (MMDiT), Flux and Wan 2.1 here")
    return (f"({network}) is not an architecture AGD has adapters for: SD1.x/SD2.x/SDXL UNets (cross-attention "
            "patch hooks), SD3 (MMDiT), Flux and Wan 2.1 text-to-video (their block-replacement hooks)")


def dit_layout(model_patcher) -> dict:
    """{block name: (hidden width, prompt width, pooled width or 0)} of every transformer block
    the model's forward offers for replacement ([paper: offset adapter], one per block)."""
    network = model_patcher.model.diffusion_model
    arch = DIT_FAMILIES.get(type(network).__name__)
    if arch == "flux":
        pooled = network.params.vec_in_dim if getattr(network, "vector_in", None) is not None else 0
        dims = (int(network.hidden_size), int(network.txt_in.in_features), int(pooled))
        return {**{f"double_block_{i}": dims for i in range(len(network.double_blocks))},
                **{f"single_block_{i}": dims for i in range(len(network.single_blocks))}}
    if arch == "mmdit":
        embedder = getattr(network, "y_embedder", None)
        pooled = embedder.mlp[0].in_features if embedder is not None else 0
        return {f"double_block_{i}": (int(block.x_block.attn.qkv.in_features),
                                      int(network.context_embedder.in_features), int(pooled))
                for i, block in enumerate(network.joint_blocks)}
    if arch == "wan":
        return {f"double_block_{i}": (int(network.dim), int(network.text_embedding[0].in_features), 0)
                for i in range(len(network.blocks))}
    if architecture_name(model_patcher) == "nextdit":
        text = network.cap_embedder[-1].in_features
        return {f"double_block_{i}": (int(network.dim), int(text), 0) for i in range(len(network.layers))}
    return {}


def adapter_layout(model_patcher, kind: Optional[str] = None) -> "tuple[str, dict]":
    """(adapter kind, layout) of the adapters this model takes; ValueError saying why it takes none.
    ``kind``: the transformer adapter kind, ``offset`` (the default) or ``block_attention``; a
    UNet takes ``cross_attention`` adapters whatever it says."""
    if architecture_name(model_patcher) == "unet":
        return "cross_attention", attn2_layout(model_patcher)
    layout = dit_layout(model_patcher)
    if not layout:
        raise ValueError(unsupported_reason(model_patcher) or "has no blocks to put adapters on")
    if kind not in (None, *TRANSFORMER_KINDS):
        raise ValueError(f"a transformer takes {' or '.join(TRANSFORMER_KINDS)} adapters, not {kind}")
    return kind or TRANSFORMER_KINDS[0], layout


def attn2_layout(model_patcher) -> dict:
    """{block name: (hidden width, context width[, pooled width])} of every cross-attention of the
    model's UNet; the pooled width (``y``, SDXL's adm channels) where the model takes one."""
    layout = {}
    pooled = int(getattr(model_patcher.model, "adm_channels", 0) or 0)
    for _name, parts, attn2 in _attn2_modules(model_patcher.model.diffusion_model):
        part = PREFIXES[parts[0]]
        index = 0 if part == "middle" else int(parts[1])
        sub = int(parts[parts.index("transformer_blocks") + 1])
        dims = (attn2.to_q.in_features, attn2.to_k.in_features)
        layout[block_name(part, index, sub)] = (*dims, pooled) if pooled else dims
    return layout


def architecture_of(model_patcher) -> dict:
    """What an adapter file records about the model it was made for."""
    from .samplers import model_family

    return {"model": type(model_patcher.model.diffusion_model).__name__,
            "architecture": architecture_name(model_patcher),
            "family": model_family(model_patcher.get_model_object("model_sampling"))}


def base_parameter_count(model_patcher) -> int:
    return sum(p.numel() for p in model_patcher.model.diffusion_model.parameters())


def _per_sample(value, n: int, device) -> torch.Tensor:
    """A scalar or a [b] tensor as [n] (ComfyUI batches cond chunks as repeats of the batch)."""
    if isinstance(value, (int, float)):
        return torch.full((n,), float(value), dtype=torch.float32, device=device)  # no host-to-device copy
    value = torch.as_tensor(value, dtype=torch.float32, device=device).reshape(-1)
    if value.numel() == n:
        return value
    if n % value.numel():
        raise ValueError(f"AGD: {value.numel()} per-sample values do not divide a batch of {n}")
    return value.repeat(n // value.numel())


class AGDAdapters:
    """The adapters of one MODEL clone: ComfyUI attention patches (UNets) or block replacements
    (transformers), and the APPLY_MODEL wrapper that hands them the call's conditioning."""

    def __init__(self, adapters: AdapterSet, scale_range, fingerprint: str, source: str = "",
                 model_sampling=None, architecture: str = "unet"):
        self.adapters = adapters
        self.model_sampling = model_sampling
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.fingerprint = fingerprint
        self.source = source
        self.architecture = architecture
        self.input_patch = _Attn2Input(self)
        self.output_patch = _Attn2Output(self)
        self.conditioning = _Conditioning(self)

    def to(self, target):
        """ComfyUI moves patches with ``.to(device)`` and ``.to(dtype)``: the adapters follow the
        device and stay in float32 (their output is cast to the model's dtype)."""
        if not isinstance(target, torch.dtype):
            self.adapters.to(target)
        return self

    def call_inputs(self, run: dict, sigma: torch.Tensor, count: int, device) -> dict:
        """The per-sample scale and timestep of one model call (the adapters' w and t), computed
        once per call by the conditioning wrapper, not once per block."""
        sigmas = _per_sample(sigma, count, device)
        return {"scale": _per_sample(run["scale"], count, device),
                "timestep": run.get("model_sampling", self.model_sampling).timestep(sigmas).float()}

    def _inputs(self, options: dict, count: int, device):
        """(scale, timestep, context, pooled) for a block call of ``count`` samples, or None where
        the adapters are off (no AGD scale in the run). All but the timestep and scale come from
        the conditioning wrapper (without it, cross-attention adapters read attn2's context and
        compute w and t from the block's options)."""
        run = options.get(RUN_KEY)
        if run is None:
            return None
        param = next(self.adapters.parameters())
        if param.device != device:
            self.adapters.to(device)
            param = next(self.adapters.parameters())
        cond = options.get(COND_KEY) or {"context": None, "pooled": None}
        if "scale" not in cond or cond["scale"].shape[0] != count:
            cond = {**cond, **self.call_inputs(run, options["sigmas"], count, device)}
        context, pooled = cond["context"], cond["pooled"]
        if context is not None:
            if context.shape[0] != count:
                raise ValueError(f"AGD: the model call's prompt batch ({context.shape[0]}) is not the block's "
                                 f"({count})")
            context = context.to(device=device, dtype=param.dtype)
        pooled = None if pooled is None else pooled.to(device=device, dtype=param.dtype)
        return cond["scale"].to(device), cond["timestep"].to(device), context, pooled

    def delta(self, n: torch.Tensor, extra_options: dict) -> Optional[torch.Tensor]:
        """The adapter output for this attn2 call ([paper: adapter]), or None where it is off."""
        stash = extra_options.pop(_STASH_KEY, None)
        if stash is None:
            return None
        hidden, context = stash
        block = extra_options.get("block")
        name = block_name(block[0], block[1], extra_options.get("block_index", 0))
        inputs = self._inputs(extra_options, hidden.shape[0], hidden.device)
        if inputs is None:
            return None
        scale, timestep, _call_context, pooled = inputs
        param = next(self.adapters.parameters())
        # attn2's own context (what the block attends to), as the adapters have always been fed
        out = self.adapters(name, hidden.to(param.dtype), scale, timestep, context.to(param.dtype), pooled)
        return out.to(n.dtype)

    def offset(self, name: str, options: dict, hidden: torch.Tensor) -> Optional[torch.Tensor]:
        """What to add to transformer block ``name``'s output ``hidden`` ([paper: offset adapter], or
        the block attention adapter's per-token output), or None where the adapters are off."""
        inputs = self._inputs(options, hidden.shape[0], hidden.device)
        if inputs is None:
            return None
        if inputs[2] is None:
            raise ValueError(f"AGD: transformer block {name} ran without the adapters' conditioning wrapper "
                             "(APPLY_MODEL); load the adapters with the AGD Adapter Loader")
        tokens = hidden.to(inputs[2].dtype) if self.adapters.kind == "block_attention" else None
        return self.adapters(name, tokens, *inputs).to(hidden.dtype)


class _Conditioning:
    """APPLY_MODEL wrapper: the call's prompt and pooled embeddings, in a copy of its options."""

    def __init__(self, owner: AGDAdapters):
        self.owner = owner

    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None,
                 **kwargs):
        options = transformer_options if transformer_options is not None else {}
        run = options.get(RUN_KEY)
        if run is not None and c_crossattn is not None:
            options = {**options, COND_KEY: {"context": c_crossattn, "pooled": kwargs.get("y"),
                                             **self.owner.call_inputs(run, t, x.shape[0], x.device)}}
        return executor(x, t, c_concat, c_crossattn, control, options, **kwargs)


def bound_now(fn):
    """``fn`` with the variables its closure reads fixed at their present values: a copy of the
    function over new cells, so later assignments in the scope that made it do not reach it."""
    if not isinstance(fn, types.FunctionType) or not fn.__closure__:
        return fn
    cells = []
    for cell in fn.__closure__:
        try:
            cells.append(types.CellType(cell.cell_contents))
        except ValueError:  # a variable not assigned yet stays unassigned
            cells.append(types.CellType())
    copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, tuple(cells))
    copy.__kwdefaults__ = fn.__kwdefaults__
    return copy


def _unchanged(tensor):
    return tensor


class _BlockOffset:
    """A ``patches_replace["dit"]`` entry: the block (or the replacement that was there), then
    the adapter's offset added to the hidden states it returns."""

    def __init__(self, owner: AGDAdapters, name: str, previous=None):
        self.owner = owner
        self.name = name
        self.previous = previous

    def _block(self, args, extra):
        streams = [k for k in ("img", "txt") if isinstance(args.get(k), torch.Tensor)]
        if not (torch.is_grad_enabled() and any(args[k].requires_grad for k in streams)):
            return self._call(args, extra)
        # Training: gradients reach the adapters of earlier blocks through this one, so backward
        # needs the block's activations. They are not kept but made again in backward (activation
        # checkpointing), from copies of the block's inputs, with the options as they were here
        # (the model's forward keeps writing block_index into its dict), and with the block that
        # ran: ComfyUI's ``original_block`` is a closure over its forward loop's variable (``block``
        # in Flux and Wan, ``i`` in MMDiT), which names the last block by the time backward runs.
        # ComfyUI's blocks write to tensors autograd has saved (Flux: ``img += ...`` after
        # ``img_norm2(img)`` saved img), which a recomputation does not see as a plain backward
        # would; so the recomputation saves copies (reentrant checkpointing runs it as an ordinary
        # forward, which the copying hook reaches).
        extra = {**extra, "original_block": bound_now(extra["original_block"])}
        frozen = {**args, **({"transformer_options": dict(args["transformer_options"])}
                             if isinstance(args.get("transformer_options"), dict) else {})}
        keys = []

        def run(*tensors):
            with torch.autograd.graph.saved_tensors_hooks(torch.clone, _unchanged):
                out = self._call({**frozen, **{k: t.clone() for k, t in zip(streams, tensors)}}, extra)
            keys[:] = list(out)
            return tuple(out[k] for k in keys)

        values = checkpoint(run, *(args[k] for k in streams), use_reentrant=True)
        return dict(zip(keys, values))

    def _call(self, args, extra):
        return self.previous(args, extra) if self.previous is not None else extra["original_block"](args)

    def __call__(self, args, extra):
        out = self._block(args, extra)
        options = args.get("transformer_options") or {}
        delta = self.owner.offset(self.name, options, out["img"])
        if delta is None:
            return out
        return {**out, "img": out["img"] + delta}

    def to(self, target):
        self.owner.to(target)
        if self.previous is not None and hasattr(self.previous, "to"):
            self.previous.to(target)
        return self


class _PostBlockOffset:
    """A ``patches["double_block"]`` entry (NextDiT): the adapter's offset added to the image
    tokens of the block that just ran (``block_index`` names it)."""

    def __init__(self, owner: AGDAdapters):
        self.owner = owner

    def __call__(self, args):
        index = args.get("block_index")
        name = f"double_block_{index}"
        if index is None or name not in self.owner.adapters:
            return {}
        delta = self.owner.offset(name, args.get("transformer_options") or {}, args["img"])
        return {} if delta is None else {"img": args["img"] + delta}

    def to(self, target):
        self.owner.to(target)
        return self


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


def _dit_key(name: str) -> tuple:
    """``double_block_3`` -> ("double_block", 3), the key of ComfyUI's block replacement."""
    kind, _, index = name.rpartition("_")
    return kind, int(index)


def find_adapters(model_patcher) -> Optional[AGDAdapters]:
    """The AGD adapters patched into this MODEL, or None."""
    import comfy.patcher_extension

    for wrapper in model_patcher.get_wrappers(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY):
        if isinstance(wrapper, _Conditioning):
            return wrapper.owner
    patches = model_patcher.model_options.get("transformer_options", {}).get("patches", {})
    for patch in patches.get("attn2_output_patch", []):
        if isinstance(patch, _Attn2Output):
            return patch.owner
    return None


def check_fits(model_patcher, adapters: AdapterSet, fingerprint: str, architecture: Optional[dict] = None) -> None:
    """ValueError unless the adapters were made for this model's architecture, base weights and
    layout. ``architecture``: what the adapter file records (the family is checked first, so an
    adapter made for another family is named as such, not as another set of weights)."""
    ours = architecture_name(model_patcher)
    theirs = (architecture or {}).get("architecture") or ("unet" if adapters.kind == "cross_attention" else None)
    if ours not in ARCHITECTURE_NAMES:
        raise ValueError("this model " + unsupported_reason(model_patcher))
    if theirs is not None and theirs != ours:
        raise ValueError(f"the adapter was made for a {ARCHITECTURE_NAMES.get(theirs, theirs)} model "
                         f"({(architecture or {}).get('model', '?')}), but this model is "
                         f"{ARCHITECTURE_NAMES[ours]} ({type(model_patcher.model.diffusion_model).__name__}); "
                         "AGD adapters only work on the model family and base weights they were trained on")
    base = base_model_fingerprint(model_patcher)
    if base != fingerprint:
        raise ValueError(f"the adapter was trained on base model {fingerprint}, but this model is {base} "
                         "(other weights or prediction type); use the model it was trained on, or train "
                         "an adapter for this one")
    kind, layout = adapter_layout(model_patcher, adapters.kind if adapters.kind in TRANSFORMER_KINDS else None)
    # (a transformer file on a UNet gets the UNet's kind back and is refused below)
    if kind != adapters.kind or layout != adapters.layout:
        raise ValueError(f"the adapter's {adapters.kind} blocks {sorted(adapters.layout)[:4]} do not match this "
                         f"model's {kind} blocks {sorted(layout)[:4]}")


def apply_adapters(model_patcher, adapters: AdapterSet, scale_range, fingerprint: str, source: str = "",
                   architecture: Optional[dict] = None):
    """A clone of the MODEL with the adapters in its attention patches or block replacements and
    the conditioning wrapper (the base is untouched)."""
    import comfy.patcher_extension

    if find_adapters(model_patcher) is not None:
        raise ValueError("this model already has AGD adapters; load adapters onto the model without them")
    check_fits(model_patcher, adapters, fingerprint, architecture)
    patched = model_patcher.clone()
    agd = AGDAdapters(adapters.eval().requires_grad_(False), scale_range, fingerprint, source,
                      model_sampling=patched.get_model_object("model_sampling"),
                      architecture=architecture_name(model_patcher))
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY, agd.conditioning)
    if adapters.kind == "cross_attention":
        patched.set_model_attn2_patch(agd.input_patch)
        patched.set_model_attn2_output_patch(agd.output_patch)
    elif agd.architecture in POST_BLOCK_FAMILIES.values():
        patched.set_model_patch(_PostBlockOffset(agd), "double_block")
    else:
        replaced = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
        for name in adapters.layout:
            key = _dit_key(name)
            patched.set_model_patch_replace(_BlockOffset(agd, name, replaced.get(key)), "dit", *key)
    return patched


def run_options(scale, model_patcher) -> dict:
    """The per-run value the adapters read from ``transformer_options[RUN_KEY]``."""
    return {"scale": scale, "model_sampling": model_patcher.get_model_object("model_sampling")}


def call_options(agd: AGDAdapters) -> dict:
    """Transformer options that put ``agd``'s hooks into one model call outside a sampler."""
    import comfy.patcher_extension

    options = {"wrappers": {comfy.patcher_extension.WrappersMP.APPLY_MODEL: {WRAPPER_KEY: [agd.conditioning]}}}
    if agd.adapters.kind == "cross_attention":
        options["patches"] = {"attn2_patch": [agd.input_patch], "attn2_output_patch": [agd.output_patch]}
    elif agd.architecture in POST_BLOCK_FAMILIES.values():
        options["patches"] = {"double_block": [_PostBlockOffset(agd)]}
    else:
        blocks = {_dit_key(name): _BlockOffset(agd, name) for name in agd.adapters.layout}
        options["patches_replace"] = {"dit": blocks}
    return options


def adapted_call(model_patcher, agd: AGDAdapters, x, sigma, context, scale, extras: Optional[dict] = None):
    """One evaluation of the frozen model with the adapters at per-sample ``scale``, outside a
    sampler (training): the model's ``apply_model`` with the hooks in its transformer options.
    ``extras``: the model's other conditioning by name (``y``, ``guidance``: what its
    ``extra_conds`` made for the prompt, see ``model_extras``); a tuple is a constant per sample
    (Lumina 2's ``num_tokens``), and samples that differ in one are evaluated in separate calls,
    as ComfyUI's own batching keeps them apart; ``TEXT_TOKENS`` (prompts of different lengths,
    zero-padded in the store) is one too, and each call gets its prompts unpadded."""
    extras = extras or {}
    constants = {name: value for name, value in extras.items() if isinstance(value, tuple)}
    if not constants:
        return _adapted_call(model_patcher, agd, x, sigma, context, scale, extras)
    groups = {}
    for row, key in enumerate(zip(*constants.values())):
        groups.setdefault(key, []).append(row)
    parts, order = [], []
    for key, rows in groups.items():
        index = torch.tensor(rows, device=x.device)

        def take(value):
            per_sample = isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == x.shape[0]
            return value[index] if per_sample else value
        part_extras = {name: take(value) for name, value in extras.items() if name not in constants}
        part_extras.update(zip(constants, key))
        part_context = context[index]
        length = part_extras.pop(TEXT_TOKENS, None)
        if length is not None:  # the prompts as the encoder gave them, without the store's padding
            part_context, part_extras = trim_prompt(part_context, part_extras, length)
        parts.append(_adapted_call(model_patcher, agd, x[index], take(sigma), part_context, take(scale),
                                   part_extras))
        order += rows
    return torch.cat(parts)[torch.argsort(torch.tensor(order, device=x.device))]


def trim_prompt(embedding: torch.Tensor, options: dict, length: int) -> "tuple[torch.Tensor, dict]":
    """A prompt's embedding and options as the encoder gave them: ``encode_prompts``' padding
    removed. The per-token options are the masks ([n, L, ...] under a name with "mask":
    ``attention_mask``, its model-side copies); a pooled output of width L is left alone."""
    padded = embedding.shape[1]
    if length == padded:
        return embedding, options
    return embedding[:, :length], {k: (v[:, :length] if "mask" in k and isinstance(v, torch.Tensor) and v.ndim >= 2
                                       and v.shape[1] == padded else v) for k, v in options.items()}


def _adapted_call(model_patcher, agd: AGDAdapters, x, sigma, context, scale, extras: dict):
    options = {**call_options(agd), "sigmas": sigma, RUN_KEY: run_options(scale, model_patcher)}
    return model_patcher.model.apply_model(x, sigma, c_crossattn=context, transformer_options=options, **extras)


class AGDGuider(PolicyGuider):
    """Samples the conditional branch only, with the scale fed to the adapters: 1 NFE per step.
    The scale reaches the adapters through ``AGDPolicy.transformer_options``, which
    ``PolicyGuider`` puts in its per-run options clone (never on the shared MODEL)."""

    def __init__(self, model_patcher, policy: AGDPolicy, node_name: str = "AGD Guider (Guidance Lab)"):
        super().__init__(model_patcher, policy, node_name)

    def set_positive(self, positive) -> None:
        """The prompt alone: AGD has no negative (it distils CFG against the empty prompt)."""
        self.inner_set_conds({"positive": positive})


__all__ = ["AGDAdapters", "AGDGuider", "ARCHITECTURE_NAMES", "RUN_KEY", "adapted_call", "adapter_layout",
           "apply_adapters", "architecture_name", "architecture_of", "attn2_layout", "base_parameter_count",
           "call_options", "calls_post_block_patch", "check_fits", "dit_layout", "find_adapters", "run_options",
           "trim_prompt", "unsupported_reason"]
