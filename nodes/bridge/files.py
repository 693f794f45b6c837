"""The pack's one file policy: which names its nodes may read and write, and how they write.

Every node that reads or writes a file goes through here (LinearAG coefficients now; the
adapters, LoRAs, trajectories and checkpoints of later methods too):

- A name is relative to ComfyUI's output folder (reading also looks in the input folder;
  model files such as LoRAs are found in ComfyUI's model folders by ``find_model_file``).
  The final name, suffix included, is resolved (symlinks followed) *before* the check that
  it stays inside that folder, so a link cannot lead out of it. Empty names, control
  characters (NUL ...), over-long names, absolute paths and folders are refused.
- A file is written only over nothing or over a file of the same kind written by the pack
  (its safetensors metadata ``format``), and over the latter only when the user asked
  (``overwrite``); otherwise the next free numbered name is used. Anything else at the
  name (a checkpoint, an image, a folder) is never replaced.
- ``plan_write`` runs before any expensive work: it checks the name and target and that the
  folder takes a file (read-only or full disks fail here, not after a calibration).
- Writes are atomic (temporary file in the same folder, fsync, rename, fsync of the folder)
  with ordinary permissions (0644), so a crash never leaves a truncated file under the name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import folder_paths

from ..validation import NodeInputError

MAX_NAME = 1024  # characters of a whole relative name
MAX_PART = 255  # bytes of one path component (the common file-system limit)
MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on its JSON header
FILE_MODE = 0o644


@dataclass(frozen=True)
class PackFile:
    """A kind of file the pack writes: a safetensors file whose metadata ``format`` is this."""

    format: str
    description: str  # for messages, e.g. "LinearAG calibration"
    suffix: str = ".safetensors"
    earlier_formats: tuple = ()  # the same kind, written by earlier versions: replaceable too

    def is_kind(self, found: Optional[str]) -> bool:
        return found is not None and (found == self.format or found in self.earlier_formats)


def output_root() -> Path:
    return Path(folder_paths.get_output_directory()).resolve()


def input_root() -> Path:
    return Path(folder_paths.get_input_directory()).resolve()


def read_roots() -> list:
    """The folders a node reads a named file from, in order, as (label, folder) pairs."""
    return [("ComfyUI's output folder", output_root()), ("ComfyUI's input folder", input_root())]


def relative_to_output(path: Path) -> str:
    return Path(path).relative_to(output_root()).as_posix()


def read_format(path: Path) -> Optional[str]:
    """The ``format`` in a safetensors file's metadata; None for any other file."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size <= MAX_HEADER:
                return None
            header = json.loads(f.read(size))
    except (OSError, ValueError):
        return None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    return fmt if isinstance(fmt, str) else None


def _clean_name(node: str, input_name: str, name, suffix: str) -> str:
    """The name as given, with its suffix: every check that needs no file system."""
    if not isinstance(name, str):
        raise NodeInputError(node, input_name, f"is {type(name).__name__}, not a file name")
    name = name.strip()
    if not name:
        raise NodeInputError(node, input_name, "is empty; give a file name")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise NodeInputError(node, input_name, "contains a control character (a NUL byte, a newline ...); "
                                               "give a plain file name")
    if len(name) > MAX_NAME:
        raise NodeInputError(node, input_name, f"is {len(name)} characters long; give a name of at most "
                                               f"{MAX_NAME}")
    if Path(name).is_absolute() or re.match(r"^[A-Za-z]:", name):
        raise NodeInputError(node, input_name, f"{name!r} is an absolute path; give a name relative to "
                                               "ComfyUI's output folder")
    last = re.split(r"[\\/]", name)[-1]
    if last in ("", ".", ".."):
        raise NodeInputError(node, input_name, f"{name!r} names a folder; give a file name inside it")
    if not name.lower().endswith(suffix):
        name += suffix
    if any(len(part.encode()) > MAX_PART for part in re.split(r"[\\/]", name)):
        raise NodeInputError(node, input_name, f"has a path component longer than {MAX_PART} bytes; "
                                               "give a shorter name")
    return name


def _inside(node: str, input_name: str, root: Path, name: str, where: str) -> Path:
    """``root / name`` with every symlink resolved; refused unless it stays inside ``root``."""
    try:
        path = (root / name).resolve()
    except (OSError, RuntimeError) as err:  # a symlink loop, a name the OS refuses
        raise NodeInputError(node, input_name, f"{name!r} cannot be resolved ({err})") from err
    if root not in path.parents:
        raise NodeInputError(node, input_name, f"{name!r} points outside {where} ({root}); give a "
                                               "name inside it (symlinks out of it are refused)")
    return path


def locate_file(node: str, input_name: str, name, suffix: str = ".safetensors",
                roots: Optional[list] = None) -> tuple:
    """(label, path) of an existing file ``name`` under the first of ``roots`` ((label, folder)
    pairs; default ComfyUI's output, then input folder) that has it."""
    name = _clean_name(node, input_name, name, suffix)
    roots = roots or read_roots()
    for label, root in roots:
        path = _inside(node, input_name, Path(root).resolve(), name, label)
        if path.is_dir():
            raise NodeInputError(node, input_name, f"{name!r} is a folder in {label}; give a file name")
        if path.is_file():
            return label, path
    where = " or ".join(f"{label} ({root})" for label, root in roots)
    raise NodeInputError(node, input_name, f"{name!r}: no such file in {where}")


def find_file(node: str, input_name: str, name, suffix: str = ".safetensors",
              roots: Optional[list] = None) -> Path:
    """The path ``locate_file`` finds."""
    return locate_file(node, input_name, name, suffix, roots)[1]


def file_stamp(locate: Callable[[], Path]) -> str:
    """What a file-reading node's ``fingerprint_inputs`` hands ComfyUI's cache: the inode, size
    and modification time of the file ``locate`` finds, so a file rewritten under the same name
    (a calibration or an adapter trained again with ``overwrite``; the pack's atomic writes
    always make a new inode) is read again instead of served from the cache; "" where the name
    does not resolve (``execute`` then says why)."""
    try:
        stat = locate().stat()
    except (NodeInputError, OSError):
        return ""
    return f"{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}"


def find_model_file(node: str, input_name: str, folder_name: str, name) -> Path:
    """A file in one of ComfyUI's model folders ("loras", "checkpoints" ...) by the name its
    list shows. ComfyUI's own look-up normalises the name against the folder, so ".." cannot
    climb out; links inside model folders are the user's own set-up and are followed as
    ComfyUI follows them."""
    name = _clean_name(node, input_name, name, "")
    path = folder_paths.get_full_path(folder_name, name)
    if path is None:
        raise NodeInputError(node, input_name, f"{name!r} is not in ComfyUI's {folder_name} folder "
                             f"({', '.join(folder_paths.get_folder_paths(folder_name))}); put it there or "
                             "choose a listed file")
    return Path(path)


@dataclass(frozen=True)
class WriteTarget:
    """Where a node will save a file; made by ``plan_write`` before the work starts."""

    node: str
    input_name: str
    path: Path
    kind: PackFile
    overwrite: bool

    def check(self) -> None:
        """Refuse a target that may not be (re)written; run again just before the rename."""
        path, kind = self.path, self.kind
        if not os.path.lexists(path):
            return
        if path.is_dir():
            raise NodeInputError(self.node, self.input_name, f"names the folder {path}; give a file name")
        if not path.is_file():
            raise NodeInputError(self.node, self.input_name, f"names {path}, which is not a regular file")
        found = read_format(path)
        if not kind.is_kind(found):
            what = f"a file of format {found!r}" if found else "not a Guidance Lab file"
            raise NodeInputError(self.node, self.input_name, f"names {path}, which is {what}, not a "
                                 f"{kind.description}; the pack never replaces it. Choose another name")
        if not self.overwrite:
            raise NodeInputError(self.node, self.input_name, f"names the existing {path}; switch "
                                 "'overwrite' on to replace it")

    def save(self, write: Callable[[Path], None]) -> Path:
        """``write(tmp)`` writes the file's content; it becomes ``path`` atomically."""
        node, input_name, path = self.node, self.input_name, self.path
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.close(fd)
            write(Path(tmp))
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, FILE_MODE)  # mkstemp makes 0600; saved files are ordinary files
            self.check()
            os.replace(tmp, path)
            tmp = None
            _fsync_folder(path.parent)
        except OSError as err:
            raise NodeInputError(node, input_name, f"could not be saved as {path}: {err.strerror or err}; "
                                 "free disk space or choose a writable folder") from err
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
        return path


def plan_write(node: str, input_name: str, name, kind: PackFile, overwrite: bool,
               reserve_bytes: int = 1 << 20) -> WriteTarget:
    """Check a name to save to, before any expensive work. Without ``overwrite`` an existing
    pack file of this kind keeps its name and the next free ``<name>_00001`` is used.
    ``reserve_bytes``: free space the file needs (the probe writes at most 1 MiB of it)."""
    name = _clean_name(node, input_name, name, kind.suffix)
    path = _inside(node, input_name, output_root(), name, "ComfyUI's output folder")
    if not overwrite and path.is_file() and kind.is_kind(read_format(path)):
        path = _next_numbered(path, kind.suffix)
    target = WriteTarget(node, input_name, path, kind, bool(overwrite))
    target.check()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A probe file proves the folder takes a write now, not after the work is done.
        with tempfile.TemporaryFile(dir=path.parent) as probe:
            probe.write(b"\0" * min(reserve_bytes, 1 << 20))
            probe.flush()
            os.fsync(probe.fileno())
        if shutil.disk_usage(path.parent).free < reserve_bytes:
            raise OSError(28, "No space left on device")
    except OSError as err:
        raise NodeInputError(node, input_name, f"cannot be saved in {path.parent}: {err.strerror or err}; "
                             "free disk space, make the folder writable or choose another name") from err
    return target


def _next_numbered(path: Path, suffix: str) -> Path:
    stem = path.name[: -len(suffix)]
    pattern = re.compile(re.escape(stem) + r"_(\d{5,})" + re.escape(suffix) + "$")
    taken = [int(m.group(1)) for p in path.parent.iterdir() if (m := pattern.match(p.name))]
    number = max(taken, default=0) + 1
    while os.path.lexists(candidate := path.with_name(f"{stem}_{number:05d}{suffix}")):
        number += 1
    return candidate


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX; folders cannot be opened on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
