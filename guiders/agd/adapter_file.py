"""AGD adapter files: safetensors (never pickle) whose metadata says what they were made for.

Tensors: the ``AdapterSet``'s flat state dict (``<block>.<tensor>``, Fourier buffers included).
Metadata (strings; JSON where structured): ``format``, ``base_fingerprint`` (the frozen model's
weights, see the host bridge), ``architecture`` (block layout, model class, family),
``scale_range`` [lo, hi], ``adapter_config``, ``training`` (settings and results),
``parameter_count``, ``base_parameter_count`` and ``command`` (what made the file).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .adapter import AdapterConfig
from .adapter_set import AdapterSet

FORMAT = "guidance_lab.agd_adapter.v1"


@dataclass
class AdapterFile:
    adapters: AdapterSet
    base_fingerprint: str
    architecture: dict
    scale_range: "tuple[float, float]"
    training: dict = field(default_factory=dict)
    command: str = ""
    base_parameter_count: int = 0

    def metadata(self) -> dict:
        """The safetensors metadata of this file (all strings)."""
        return {
            "format": FORMAT,
            "base_fingerprint": self.base_fingerprint,
            "architecture": json.dumps({**self.architecture, "layout": self.adapters.layout}, sort_keys=True),
            "scale_range": json.dumps([float(v) for v in self.scale_range]),
            "adapter_config": json.dumps(self.adapters.config.to_dict(), sort_keys=True),
            "training": json.dumps(self.training, sort_keys=True),
            "parameter_count": str(self.adapters.parameter_count()),
            "base_parameter_count": str(int(self.base_parameter_count)),
            "command": self.command,
        }


def save(path, adapter_file: AdapterFile) -> Path:
    """Write atomically (temporary file in the same folder, fsync, rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".agd-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(adapter_file.adapters.flat_state_dict(), tmp, metadata=adapter_file.metadata())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load(path) -> AdapterFile:
    """Read and check an adapter file; ValueError saying what is wrong with it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as error:  # safetensors has its own error types for truncated or garbled files
        raise ValueError(f"{path} cannot be read as safetensors ({error}); it may be truncated or "
                         "corrupted") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not an AGD adapter file (metadata 'format' is {meta.get('format')!r}, "
                         f"expected {FORMAT!r})")
    try:
        architecture = json.loads(meta["architecture"])
        layout = {name: tuple(dims) for name, dims in architecture.pop("layout").items()}
        config = AdapterConfig.from_dict(json.loads(meta["adapter_config"]))
        lo, hi = (float(v) for v in json.loads(meta["scale_range"]))
        training = json.loads(meta.get("training", "{}"))
        fingerprint = meta["base_fingerprint"]
        base_parameters = int(meta.get("base_parameter_count", "0"))
    except (KeyError, ValueError, TypeError, AttributeError) as error:
        raise ValueError(f"{path} has malformed or missing AGD metadata ({error!r})") from None
    if not lo <= hi:
        raise ValueError(f"{path} records an empty scale range [{lo}, {hi}]")
    adapters = AdapterSet(layout, config)
    try:
        adapters.load_flat_state_dict(tensors)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return AdapterFile(adapters, fingerprint, architecture, (lo, hi), training, meta.get("command", ""),
                       base_parameters)


__all__ = ["AdapterFile", "FORMAT", "load", "save"]
