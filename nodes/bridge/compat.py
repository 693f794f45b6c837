"""The one seam between the pack and ComfyUI's internals that change between releases.

Every difference between the ComfyUI versions the pack is tested on (0.3.75 and 0.33.x) is
handled here and nowhere else, so an update that moves an internal is fixed in one place.
"""

from __future__ import annotations

import dataclasses


def flux_network_kwargs(config: dict) -> dict:
    """Keyword arguments for this host's ``comfy.ldm.flux.model.Flux`` from a Flux config.

    0.33 added ``txt_ids_dims`` as a required field (``[]`` keeps Flux.1's all-zero text
    positions); 0.3.75 refuses it. Fields this host does not know are refused by name so a
    file made for a newer Flux variant is not silently built as another network."""
    from comfy.ldm.flux.model import FluxParams

    fields = {f.name: f for f in dataclasses.fields(FluxParams)}
    kwargs = dict(config)
    if "txt_ids_dims" in fields:
        kwargs.setdefault("txt_ids_dims", [])
    elif kwargs.get("txt_ids_dims", []) == []:
        kwargs.pop("txt_ids_dims", None)
    unknown = sorted(k for k in kwargs if k not in fields and k != "image_model")
    if unknown:
        raise ValueError(f"this ComfyUI's Flux has no setting(s) {unknown}")
    return kwargs


# Flux's q/k RMSNorm gain: ``scale`` in 0.3.75 (and in BFL's files), ``weight`` in 0.33 (where
# QKNorm became ComfyUI's ops.RMSNorm). Files keep BFL's name; each host gets its own.
_FLUX_NORM_GAIN = ("_norm.scale", "_norm.weight")


def flux_state_dict_for(network, state_dict: dict) -> dict:
    """A Flux state dict in the parameter names of this host's ``network``."""
    expected = set(network.state_dict())
    out = {}
    for key, value in state_dict.items():
        if key not in expected:
            for old, new in (_FLUX_NORM_GAIN, _FLUX_NORM_GAIN[::-1]):
                if key.endswith(old) and key[: -len(old)] + new in expected:
                    key = key[: -len(old)] + new
                    break
        out[key] = value
    return out


def flux_state_dict_canonical(state_dict: dict) -> dict:
    """A Flux state dict in BFL's names (what the pack writes to files, on every host)."""
    old, new = _FLUX_NORM_GAIN[1], _FLUX_NORM_GAIN[0]
    return {(k[: -len(old)] + new if k.endswith(old) else k): v for k, v in state_dict.items()}
