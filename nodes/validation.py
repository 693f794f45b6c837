"""Input checks shared by the pack's nodes: errors name the node and the input."""

from __future__ import annotations

import torch


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
