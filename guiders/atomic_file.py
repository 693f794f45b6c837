"""One way to write a file so that a crash never leaves a truncated one under its name."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

FILE_MODE = 0o644  # mkstemp makes 0600; written files are ordinary files


def write_atomically(path, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` fills a temporary file beside ``path``, which is fsynced and renamed over
    ``path``: a kill at any moment leaves the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


__all__ = ["FILE_MODE", "write_atomically"]
