"""The one rule of the layout: the pack imports ComfyUI only under ``nodes/``.

The core (``guiders/``, ``samplers/``) and the shipped data package (``default_model/``)
must import with no host at all; every module of them is imported here in a fresh
interpreter. A static check covers every shipped module, imported or not.
"""

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CORE_PACKAGES = ("guiders", "samplers", "default_model")
HOST_MODULES = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "comfy_config", "folder_paths",
                "nodes", "node_helpers", "latent_preview", "server", "execution", "app"}
NOT_SHIPPED = {"tools", "tests", ".host", ".git", ".ci", "docs", "workflows"}


def core_modules() -> list:
    names = []
    for package in CORE_PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            names.append(".".join(("guidance_lab",) + (parts[:-1] if parts[-1] == "__init__" else parts)))
    return names


def test_every_core_module_imports_without_comfyui():
    modules = core_modules()
    assert len(modules) >= 10, modules  # the walk found the core
    code = textwrap.dedent(f"""
        import importlib, importlib.util, sys
        spec = importlib.util.spec_from_file_location(
            "guidance_lab", {str(REPO / '__init__.py')!r}, submodule_search_locations=[{str(REPO)!r}])
        mod = importlib.util.module_from_spec(spec); sys.modules["guidance_lab"] = mod
        spec.loader.exec_module(mod)
        for name in {modules!r}:
            importlib.import_module(name)
        bad = sorted(m for m in sys.modules if m.split(".")[0] in {sorted(HOST_MODULES)!r})
        assert not bad, bad
    """)
    subprocess.run([sys.executable, "-c", code], check=True)


def imported_top_levels(path: Path) -> set:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_comfyui_is_imported_only_under_nodes():
    offenders = []
    for path in sorted(REPO.rglob("*.py")):
        rel = path.relative_to(REPO)
        if rel.parts[0] in NOT_SHIPPED or rel.parts[0] == "nodes":
            continue
        host = imported_top_levels(path) & HOST_MODULES
        if host:
            offenders.append(f"{rel}: {sorted(host)}")
    assert not offenders, "ComfyUI imported outside nodes/:\n" + "\n".join(offenders)


def test_nothing_outside_tests_imports_from_tests():
    offenders = []
    for path in sorted(REPO.rglob("*.py")):
        rel = path.relative_to(REPO)
        if rel.parts[0] in {"tests", ".host", ".git"}:
            continue
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
        if any(m == "tests" or m.startswith(("tests.", "guidance_lab.tests")) for m in imported):
            offenders.append(str(rel))
    assert not offenders, offenders


def test_scripts_live_under_tools_and_every_named_script_exists():
    """docs/ and workflows/ hold what the tools wrote, not the tools (issue 29, item 6); a
    script path named in the README, the docs or a tool's own usage line exists."""
    import re

    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    misplaced = [p for p in tracked if p.split("/", 1)[0] in ("docs", "workflows") and p.endswith(".py")]
    assert not misplaced, f"scripts outside tools/: {misplaced}"
    texts = [p for p in tracked if p == "README.md" or (p.split("/", 1)[0] in ("docs", "tools")
                                                         and p.endswith((".md", ".json", ".py")))]
    named = {m for p in texts for m in re.findall(r"\b(?:docs|tools)/[\w./-]+\.py\b", (REPO / p).read_text())}
    assert named, "no script path found: the pattern is wrong"
    missing = sorted(n for n in named if not (REPO / n).is_file())
    assert not missing, f"named but absent: {missing}"
