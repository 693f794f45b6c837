"""Input checks shared by the pack's nodes: errors name the node, the input and what to do.

ComfyUI's own checks let a lot through when a prompt comes from the API instead of the
UI: NaN passes its min/max comparison (sent as JSON ``NaN`` or the string "nan"), and a
literal sent for a MODEL, SAMPLER, SIGMAS, GUIDER, NOISE or LATENT input reaches the node
as is. ``checks_inputs`` therefore checks every input of a node against the node's own
schema before ``execute`` does any work.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers

import torch

# The most steps a schedule may have (ComfyUI's BasicScheduler allows 10000 as well): a
# client cannot make a run, a calibration or a record arbitrarily long.
MAX_STEPS = 10000


class NodeInputError(ValueError):
    """A node received an input it cannot use; the message names node and input."""

    def __init__(self, node: str, input_name: str, problem: str):
        super().__init__(f"{node}: input '{input_name}' {problem}")
        self.node = node
        self.input_name = input_name


def require_conditioning(node: str, input_name: str, conditioning) -> list:
    """A CONDITIONING is a non-empty list of [tensor, options] pairs."""
    if not isinstance(conditioning, list) or not conditioning:
        raise NodeInputError(node, input_name, "is an empty conditioning; connect a text "
                             "encoder's output (e.g. CLIPTextEncode) to it")
    for entry in conditioning:
        if (not isinstance(entry, (list, tuple)) or len(entry) != 2
                or not isinstance(entry[0], torch.Tensor) or not isinstance(entry[1], dict)):
            raise NodeInputError(node, input_name, "is not a conditioning (expected a list of "
                                 "[tensor, options] pairs, as CLIPTextEncode outputs)")
        if entry[0].numel() == 0:
            raise NodeInputError(node, input_name, f"holds an empty tensor of shape {tuple(entry[0].shape)}")
    return conditioning


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_number(node: str, name: str, value, lo, hi, integer: bool):
    """A finite int or float in [lo, hi]; bools and numeric strings are not numbers here."""
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, numbers.Integral) if integer else isinstance(value, numbers.Real)
    if isinstance(value, bool) or not ok_type:
        raise NodeInputError(node, name, f"is {_show(value)}; give {kind} in [{lo}, {hi}]")
    if not math.isfinite(value):
        raise NodeInputError(node, name, f"is {value}; give a finite number in [{lo}, {hi}]")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise NodeInputError(node, name, f"is {value}, outside [{lo}, {hi}]; give {kind} in that range")
    return value


def check_sigmas(node: str, name: str, sigmas) -> torch.Tensor:
    if not isinstance(sigmas, torch.Tensor) or sigmas.ndim != 1 or not sigmas.is_floating_point():
        raise NodeInputError(node, name, f"is {_show(sigmas)}, not a noise schedule; connect a "
                             "scheduler's SIGMAS output (e.g. BasicScheduler)")
    if len(sigmas) == 0:
        raise NodeInputError(node, name, "is an empty schedule; connect a scheduler's SIGMAS output")
    if len(sigmas) - 1 > MAX_STEPS:
        raise NodeInputError(node, name, f"has {len(sigmas) - 1} steps; at most {MAX_STEPS} are allowed")
    if not bool(torch.isfinite(sigmas).all()) or bool((sigmas < 0).any()):
        raise NodeInputError(node, name, "holds negative or non-finite sigmas; use a scheduler's output")
    return sigmas


def check_latent(node: str, name: str, latent) -> dict:
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if getattr(samples, "is_nested", False) and not isinstance(samples, torch.Tensor):
        return latent  # ComfyUI's NestedTensor (several latents in one, newer hosts): the guider checks it
    if not isinstance(samples, torch.Tensor) or samples.ndim < 3 or samples.numel() == 0:
        raise NodeInputError(node, name, f"is {_show(latent)}, not a latent; connect a LATENT "
                             "output (e.g. EmptyLatentImage or VAEEncode)")
    return latent


def _connect(what: str, example: str) -> str:
    return f"; connect a {what} output (e.g. {example}) to it"


def _has(method: str):
    return lambda v: callable(getattr(v, method, None))


def _is_model(value) -> bool:
    import comfy.model_patcher

    return isinstance(value, comfy.model_patcher.ModelPatcher)


# Linked (non-widget) input types: how to recognise a real value, and what to connect. A
# node module that defines a type of its own adds its entry here.
LINKED = {
    "MODEL": (_is_model, _connect("MODEL", "Load Checkpoint")),
    "SAMPLER": (_has("sample"), _connect("SAMPLER", "KSamplerSelect or Sampler (Guidance Lab)")),
    "GUIDER": (_has("sample"), _connect("GUIDER", "a Guidance Lab guider or CFGGuider")),
    "NOISE": (_has("generate_noise"), _connect("NOISE", "RandomNoise")),
    "IMAGE": (lambda v: isinstance(v, torch.Tensor) and v.ndim == 4 and v.numel() > 0,
              _connect("IMAGE", "VAEDecode")),
}


def check_inputs(node_cls, values: dict) -> None:
    """Every given input of ``node_cls`` against its schema: numbers finite and in range,
    booleans, strings and combo choices of the right kind, linked inputs real objects."""
    from comfy_api.latest import io

    node = getattr(node_cls, "DISPLAY", None) or node_cls.define_schema().display_name
    for spec in node_cls.define_schema().inputs:
        if spec.id not in values or (spec.optional and values[spec.id] is None):
            continue
        value, kind = values[spec.id], spec.get_io_type()
        if isinstance(spec, (io.Int.Input, io.Float.Input)):
            check_number(node, spec.id, value, spec.min, spec.max, integer=isinstance(spec, io.Int.Input))
        elif isinstance(spec, io.Boolean.Input) and not isinstance(value, bool):
            raise NodeInputError(node, spec.id, f"is {_show(value)}; give true or false")
        elif isinstance(spec, io.Combo.Input) and value not in spec.options:
            raise NodeInputError(node, spec.id, f"is {_show(value)}; choose one of {list(spec.options)}")
        elif isinstance(spec, io.String.Input) and not isinstance(value, str):
            raise NodeInputError(node, spec.id, f"is {_show(value)}; give a text")
        elif kind == "CONDITIONING":
            require_conditioning(node, spec.id, value)
        elif kind == "SIGMAS":
            check_sigmas(node, spec.id, value)
        elif kind == "LATENT":
            check_latent(node, spec.id, value)
        elif kind in LINKED and not LINKED[kind][0](value):
            raise NodeInputError(node, spec.id, f"is {_show(value)}, not a {kind}{LINKED[kind][1]}")


def checks_inputs(execute):
    """Decorates a node's ``execute``: ``check_inputs`` runs on its arguments first."""
    signature = inspect.signature(execute)

    @functools.wraps(execute)
    def checked(cls, *args, **kwargs):
        bound = signature.bind(cls, *args, **kwargs)
        bound.apply_defaults()
        check_inputs(cls, bound.arguments)
        return execute(cls, *args, **kwargs)

    return checked
