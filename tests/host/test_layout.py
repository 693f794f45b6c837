"""The layout's registries stay in step with the code: README node table, published files."""

import fnmatch
import subprocess

from tools import readme_nodes
from tools.paths import README, REPO


def test_readme_node_table_is_generated_from_the_schemas():
    schemas = readme_nodes.node_schemas()
    current = README.read_text()
    wanted = readme_nodes.replace_between_markers(current, readme_nodes.node_table(schemas))
    assert current == wanted, "README node table is stale: run `.host/venv/bin/python -m tools.readme_nodes`"


def test_every_node_is_in_the_readme_with_its_id():
    text = README.read_text()
    for schema in readme_nodes.node_schemas():
        assert f"`{schema.node_id}`" in text


def ignored(path: str, patterns) -> bool:
    """gitignore-style match for the simple patterns .comfyignore uses (folders, names, globs)."""
    for pattern in patterns:
        if pattern.endswith("/"):
            if path.startswith(pattern) or f"/{pattern}" in f"/{path}":
                return True
        elif fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path.rsplit("/", 1)[-1], pattern):
            return True
    return False


def published_files() -> list:
    """What the Comfy Registry would package: git-tracked files minus .comfyignore matches."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    patterns = [line.strip() for line in (REPO / ".comfyignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    return [p for p in tracked if not ignored(p, patterns)]


def test_published_files_are_the_pack_only():
    files = published_files()
    tops = {p.split("/", 1)[0] for p in files}
    assert "__init__.py" in tops and "nodes" in tops and "guiders" in tops and "samplers" in tops
    assert not tops & {"tools", "tests", "docs", ".ci", "Makefile"}, sorted(tops)
    assert any(p.startswith("default_model/weights/") for p in files)
