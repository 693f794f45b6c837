"""Training checkpoints as safetensors, so that resuming a run never unpickles anything.

A checkpoint is any nest of dicts, lists and tuples over tensors and plain values (None,
bool, int, float, str): a model's and an optimizer's ``state_dict``, a step, the run's
settings. The tensors go into the safetensors file under generated names; the nest itself
goes into its metadata as JSON in which every node says what it was (dict, list, tuple,
tensor or value), so the load gives back the same types: an optimizer's integer state
keys stay integers (``Optimizer.load_state_dict`` matches them against its parameter ids,
and string keys would drop the state without a word), tuples stay tuples.

Writes are atomic (temporary file, fsync, rename): a run killed mid-write keeps the
previous checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .atomic_file import write_atomically
FORMAT = "guidance_lab.training_checkpoint.v1"
_PLAIN = (type(None), bool, int, float, str)


def _encode(value, tensors: dict):
    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        # A copy of its own: safetensors refuses tensors that share memory (views, tied weights).
        tensors[name] = value.detach().to("cpu").contiguous().clone()
        return {"tensor": name}
    if isinstance(value, dict):
        return {"dict": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return {"tuple" if isinstance(value, tuple) else "list": [_encode(v, tensors) for v in value]}
    if isinstance(value, _PLAIN):
        return {"value": value}
    raise TypeError(f"a training checkpoint holds tensors, dicts, lists, tuples and plain values, not "
                    f"{type(value).__name__}")


def _decode(node: dict, tensors):
    (kind, body), = node.items()
    if kind == "tensor":
        return tensors.get_tensor(body)
    if kind == "dict":
        return {_decode(k, tensors): _decode(v, tensors) for k, v in body}
    if kind in ("list", "tuple"):
        items = [_decode(v, tensors) for v in body]
        return tuple(items) if kind == "tuple" else items
    if kind == "value":
        return body
    raise ValueError(f"unknown checkpoint entry {kind!r}")


def save(path: Path, state) -> None:
    """Write ``state`` to ``path`` atomically."""
    tensors: dict = {}
    structure = json.dumps(_encode(state, tensors))
    write_atomically(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": FORMAT,
                                                                                "structure": structure}))


def load(path: Path):
    """The state ``save`` wrote, tensors on the CPU; ValueError for a file that is not one."""
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise ValueError(f"{path} is not a Guidance Lab training checkpoint "
                                 f"(format {metadata.get('format')!r})")
            return _decode(json.loads(metadata["structure"]), f)
    except ValueError:
        raise
    except Exception as err:  # a truncated or foreign file: safetensors' and json's errors alike
        raise ValueError(f"{path} is not a readable training checkpoint: {err}") from err


__all__ = ["FORMAT", "load", "save"]
