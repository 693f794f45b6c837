"""Where the pack's nodes read and write files: inside ComfyUI's output folder, nowhere else."""

from __future__ import annotations

from pathlib import Path

import folder_paths

from ..validation import NodeInputError


def output_root() -> Path:
    return Path(folder_paths.get_output_directory()).resolve()


def resolve_in_output(node: str, input_name: str, name: str, must_exist: bool) -> Path:
    """A path inside ComfyUI's output folder; anything that escapes it is refused."""
    root = output_root()
    name = name.strip()
    if not name:
        raise NodeInputError(node, input_name, "is empty")
    path = (root / name).resolve()
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    if root not in path.parents:
        raise NodeInputError(node, input_name, f"{name!r} points outside ComfyUI's output folder")
    if must_exist and not path.is_file():
        raise NodeInputError(node, input_name, f"{name!r}: no such file in {root}")
    return path


def relative_to_output(path: Path) -> str:
    return str(Path(path).relative_to(output_root()))
