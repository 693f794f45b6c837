"""Helpers for API-format graphs (``/prompt`` payloads): load and retarget them."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from ..paths import API_WORKFLOWS


def api_workflows() -> list[Path]:
    return sorted(API_WORKFLOWS.glob("*.json"))


def load(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def retarget(graph: dict, ckpt_name: str | None = None, size: int | None = None,
             steps: int | None = None) -> dict:
    """A copy of ``graph`` using another checkpoint, image size or step count."""
    graph = copy.deepcopy(graph)
    for node in graph.values():
        inputs = node["inputs"]
        if ckpt_name is not None and "ckpt_name" in inputs:
            inputs["ckpt_name"] = ckpt_name
        if size is not None and {"width", "height"} <= inputs.keys():
            inputs["width"] = inputs["height"] = size
        if steps is not None and isinstance(inputs.get("steps"), int):
            inputs["steps"] = steps
    return graph


def nodes_of(graph: dict, class_type: str) -> dict:
    return {k: v for k, v in graph.items() if v["class_type"] == class_type}
