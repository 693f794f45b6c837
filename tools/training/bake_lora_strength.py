"""Scale a Smooth-LoRA file's update by a strength, so that the file at strength 1 is the
original at that strength (up' = s up: W + up' @ down = W + s up @ down).

    .host/venv/bin/python -m tools.training.bake_lora_strength --lora IN.safetensors --strength 0.6 \\
        --out OUT.safetensors

For a shipped file whose measured strength is not 1: a user who loads it at the loader's
default then gets what was measured. The metadata keeps everything and records the
strength baked in (``strength_baked``, multiplied into any earlier one) and the command.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path


def bake(source: Path, out: Path, strength: float, command: str = "") -> dict:
    """Write ``source`` with every ``*.up.weight`` times ``strength``; returns the new metadata."""
    import math

    from safetensors import safe_open
    from safetensors.torch import save_file

    if not (math.isfinite(strength) and strength > 0):
        raise ValueError(f"strength must be a positive number, got {strength!r}")
    with safe_open(str(source), framework="pt", device="cpu") as f:
        metadata = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if not any(k.endswith(".up.weight") for k in tensors):
        raise ValueError(f"{source}: no '*.up.weight' tensors: not a LoRA in the diffusers layout")
    scaled = {k: (v * strength if k.endswith(".up.weight") else v).contiguous() for k, v in tensors.items()}
    previous = float(metadata.get("strength_baked", "1"))
    history = json.loads(metadata.get("history", "[]"))
    history.append({"command": command, "strength": strength})
    metadata.update(strength_baked=repr(previous * strength), history=json.dumps(history))
    tmp = out.with_name(f".{out.name}.tmp")
    save_file(scaled, str(tmp), metadata=metadata)
    tmp.replace(out)
    return metadata


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lora", required=True, type=Path)
    p.add_argument("--strength", required=True, type=float)
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args(argv)
    try:
        meta = bake(args.lora, args.out, args.strength,
                    "bake_lora_strength.py " + shlex.join(sys.argv[1:] if argv is None else argv))
    except ValueError as err:
        raise SystemExit(str(err)) from None
    print(f"wrote {args.out}: strength {meta['strength_baked']} baked in")


if __name__ == "__main__":
    main()
