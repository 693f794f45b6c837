"""JSON booleans sent for the pack's number inputs, refused before ComfyUI reads them as numbers.

ComfyUI's prompt validation converts a widget value with ``float()`` / ``int()`` in place, so
``"cfg": true`` reaches a node as 1.0, indistinguishable from a real 1.0. The one place that
still sees the client's value is an on-prompt handler (``PromptServer.add_on_prompt_handler``,
ComfyUI's hook for inspecting a prompt before validation): it swaps such a boolean for a text
that ``float()`` and ``int()`` reject, so ComfyUI's own validation refuses the prompt (HTTP
400) naming the node and the input, and says why in the value it shows.
"""

from __future__ import annotations

import logging

log = logging.getLogger("guidance_lab")

_registered = False


def number_inputs(node_classes) -> dict:
    """{node id: {input name: "INT" | "FLOAT"}} of the given V3 node classes."""
    from comfy_api.latest import io

    table = {}
    for node in node_classes:
        schema = node.define_schema()
        kinds = {spec.id: ("INT" if isinstance(spec, io.Int.Input) else "FLOAT")
                 for spec in schema.inputs if isinstance(spec, (io.Int.Input, io.Float.Input))}
        if kinds:
            table[schema.node_id] = kinds
    return table


def refuse_booleans(json_data, table: dict):
    """The prompt with every JSON boolean in a listed number input replaced by a refusal text."""
    prompt = json_data.get("prompt") if isinstance(json_data, dict) else None
    if not isinstance(prompt, dict):
        return json_data
    for node in prompt.values():
        kinds = table.get(node.get("class_type")) if isinstance(node, dict) else None
        inputs = node.get("inputs") if kinds else None
        if not isinstance(inputs, dict):
            continue
        for name, kind in kinds.items():
            value = inputs.get(name)
            wrapped = isinstance(value, dict) and "__value__" in value
            if isinstance(value["__value__"] if wrapped else value, bool):
                shown = str(value["__value__"] if wrapped else value).lower()
                inputs[name] = f"{shown} (a JSON boolean; give {'an integer' if kind == 'INT' else 'a number'})"
    return json_data


def register(node_classes) -> None:
    """Install the handler on the running server, once (no server in-process: nothing to do)."""
    global _registered
    try:
        import server
    except ImportError:
        return
    instance = getattr(server.PromptServer, "instance", None)
    if _registered or instance is None or not hasattr(instance, "add_on_prompt_handler"):
        return
    table = number_inputs(node_classes)
    instance.add_on_prompt_handler(lambda json_data: refuse_booleans(json_data, table))
    _registered = True
    log.debug("guidance_lab: JSON booleans refused for %d nodes' number inputs", len(table))
