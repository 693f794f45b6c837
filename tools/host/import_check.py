"""Static check of every ComfyUI name the pack imports and every ComfyUI call it makes, against
a ComfyUI source tree: comfy-import-guard (PyPI, pinned in host.lock, run from the wheel the
provisioner keeps in the cache) with its git checkout replaced by the tree's folder.

comfy-import-guard reads ``comfy.*`` only; the pack also imports ``comfy_api``,
``comfy_extras``, ``folder_paths`` ..., so its notion of a ComfyUI module is widened to every
top-level module of ComfyUI's tree that a pack can import (``HOST_MODULES``).

    .host/venv/bin/python -m tools.host.import_check [TREE ...]   # default: every provisioned tree
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..paths import CACHE, PINNED_HOST, REPO

HOST_MODULES = ("comfy", "comfy_api", "comfy_extras", "comfy_execution", "comfy_config", "folder_paths",
                "node_helpers", "latent_preview", "nodes", "server", "execution", "comfyui_version")
# Where version differences may be handled by calling one function in several shapes.
SEAM = "nodes/bridge/compat.py"


def guard_wheel() -> Path:
    from .provision import read_lock

    wheel = CACHE / "wheels" / read_lock()["import_guard_wheel_file"]
    if not wheel.exists():
        raise FileNotFoundError(f"{wheel} missing: run `make provision`")
    return wheel


def load_guard():
    wheel = str(guard_wheel())
    if wheel not in sys.path:
        sys.path.insert(0, wheel)
    import comfy_import_guard.extract as extract

    # The tool's only test for "a ComfyUI module" (comfy.*), widened to ComfyUI's other
    # top-level modules; the pack's own modules are imported relatively and never match.
    extract._is_comfy = lambda dotted: dotted.split(".", 1)[0] in HOST_MODULES
    return extract


class TreeRepo:
    """The three questions comfy-import-guard asks of its git checkout, answered from a folder."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._files = None

    def resolve_ref(self, ref):
        return str(self.root)

    def tree_files(self, ref):
        if self._files is None:
            self._files = frozenset(str(p.relative_to(self.root)) for p in self.root.rglob("*.py")
                                    if "custom_nodes" not in p.relative_to(self.root).parts)
        return self._files

    def read_file(self, ref, path):
        file = self.root / path
        return file.read_text(errors="replace") if file.is_file() and path in self.tree_files(ref) else None

    def is_dir(self, ref, path):
        prefix = path.strip("/") + "/"
        return any(p.startswith(prefix) for p in self.tree_files(ref))


def check(tree: Path, pack: Path = REPO) -> dict:
    """comfy-import-guard's report for ``pack`` against ``tree`` (verdict, breaking, soft, ...)."""
    load_guard()
    from comfy_import_guard.report import check_pack
    from comfy_import_guard.resolve import Resolver
    from comfy_import_guard.signature import SignatureResolver

    resolver = Resolver(TreeRepo(tree), "tree")
    return check_pack(resolver, "guidance_lab", str(pack), None, SignatureResolver(resolver), {})


def problems(report: dict) -> list[str]:
    """Everything that fails the check: any break, unresolved name or drifted monkeypatch, and
    any version shim (a call that binds on one host only) outside the seam."""
    found = []
    for kind in ("breaking", "unresolvable", "signature_drift", "soft", "unparseable"):
        for row in report[kind]:
            if kind == "soft" and row.get("status") == "SIGNATURE_SHIM" and row.get("file") == SEAM:
                continue
            where = f"{row.get('file')}:{row.get('line')}"
            found.append(f"{kind} {row.get('dotted', '')} at {where}: {row.get('detail') or row.get('error') or row.get('status')}")
    return found


def provisioned_trees() -> list[Path]:
    return [t for t in [PINNED_HOST / "ComfyUI", *sorted(PINNED_HOST.glob("comfyui-*/ComfyUI"))]
            if (t / "main.py").exists()]


def main(argv=None) -> int:
    trees = [Path(a) for a in (argv if argv is not None else sys.argv[1:])] or provisioned_trees()
    failed = False
    for tree in trees:
        report = check(tree)
        found = problems(report)
        failed |= bool(found)
        print(f"{tree}: {report['references']} references in {report['python_files']} files: "
              f"{'OK' if not found else f'{len(found)} problem(s)'}")
        for line in found:
            print("  " + line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
