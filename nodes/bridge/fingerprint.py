"""A fingerprint of a model's weights, to tie calibration files to their model.

Scheme: blake2b over the prediction type (the model_sampling classes, so an eps model
patched to v-prediction differs) and over every tensor of the diffusion model: its name,
shape and values as float32 (so a lossless cast, e.g. fp16 weights loaded as fp32, keeps
the fingerprint and any changed value changes it), plus the weight patches of the
ModelPatcher (LoRAs and the like: their tensors, strengths and offsets).

Hashing every weight reads the whole model once (about a second per GB), so the result
is cached: the base weights per model object (ComfyUI changes a loaded model's weights
only through patches, and ``get_key_patches`` hands back the unpatched originals even
while patches are applied), the patches per ``patches_uuid`` (ComfyUI draws a new one
whenever they change). Later runs of the same model cost a dictionary look-up.
"""

from __future__ import annotations

import hashlib
import threading
import weakref

import torch

PREFIX = "diffusion_model."
_base_cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> hex digest
_patch_cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> {uuid: digest}
_lock = threading.Lock()


def _hash_tensor(digest, tensor: torch.Tensor) -> None:
    values = tensor.detach()
    if values.is_floating_point() and values.element_size() <= 4:
        values = values.to(torch.float32)
    values = values.to("cpu").contiguous()
    digest.update(f"{values.dtype}{tuple(values.shape)}".encode())
    digest.update(values.reshape(-1).view(torch.uint8).numpy().data if values.numel() else b"")


def _hash_value(digest, value, depth: int = 0) -> None:
    """Patch data: tensors by value, plain data by repr, adapters through their weights."""
    if isinstance(value, torch.Tensor):
        _hash_tensor(digest, value)
    elif isinstance(value, (str, int, float, bool, type(None))):
        digest.update(repr(value).encode())
    elif isinstance(value, (list, tuple)) and depth < 8:
        digest.update(b"[")
        for item in value:
            _hash_value(digest, item, depth + 1)
        digest.update(b"]")
    elif isinstance(value, dict) and depth < 8:
        for key in sorted(value, key=repr):
            digest.update(repr(key).encode())
            _hash_value(digest, value[key], depth + 1)
    else:  # a weight adapter (LoRAAdapter ...), a function: its kind and its tensors
        digest.update(type(value).__qualname__.encode())
        weights = getattr(value, "weights", None)
        if weights is not None and depth < 8:
            _hash_value(digest, weights, depth + 1)


def _canonical(name: str) -> str:
    """A weight's name as every supported ComfyUI gives it: 0.33 renamed the RMSNorm ``scale``
    of its Flux network to ``weight`` (converting older files on load), and the same weights must
    keep one fingerprint across hosts (an AGD adapter trained on one host, loaded on another)."""
    return name.removesuffix(".scale") + ".weight" if name.endswith(".scale") else name


def _base_digest(model_patcher) -> str:
    digest = hashlib.blake2b(digest_size=16)
    patches = model_patcher.get_key_patches(PREFIX)
    for name in sorted(patches, key=_canonical):
        digest.update(_canonical(name).encode())
        _hash_tensor(digest, patches[name][0][0])  # the original weight, unpatched
    return digest.hexdigest()


def _patch_digest(model_patcher) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted((k for k in model_patcher.patches if k.startswith(PREFIX)), key=_canonical):
        digest.update(_canonical(name).encode())
        _hash_value(digest, model_patcher.patches[name])
    return digest.hexdigest()


def model_fingerprint(model_patcher) -> str:
    model = model_patcher.model
    with _lock:  # two prompts never hash the same model twice
        if model not in _base_cache:
            _base_cache[model] = _base_digest(model_patcher)
        patches = _patch_cache.setdefault(model, {})
        key = model_patcher.patches_uuid
        if key not in patches:
            patches[key] = _patch_digest(model_patcher) if model_patcher.patches else ""
        digest = hashlib.blake2b(digest_size=8)
        sampling = model_patcher.get_model_object("model_sampling")
        digest.update(" ".join(c.__name__ for c in type(sampling).__mro__).encode())
        digest.update(_base_cache[model].encode())
        digest.update(patches[key].encode())
    return digest.hexdigest()


def base_model_fingerprint(model_patcher) -> str:
    """The fingerprint of the base model alone: prediction type and unpatched weights, without
    weight patches (LoRAs). What AGD adapters are tied to: they add to the base model's
    activations, so a LoRA on the same base keeps them valid."""
    model = model_patcher.model
    with _lock:
        if model not in _base_cache:
            _base_cache[model] = _base_digest(model_patcher)
        digest = hashlib.blake2b(digest_size=8)
        sampling = model_patcher.get_model_object("model_sampling")
        digest.update(" ".join(c.__name__ for c in type(sampling).__mro__).encode())
        digest.update(_base_cache[model].encode())
    return digest.hexdigest()
