"""The README's node table, generated from the nodes' own schemas (ids, names, descriptions,
inputs, outputs), so it cannot drift from the code.

    .host/venv/bin/python -m tools.readme_nodes          # rewrite the table in README.md
    .host/venv/bin/python -m tools.readme_nodes --check  # exit 1 if it is stale (the tests do this)
"""

from __future__ import annotations

import argparse
import sys

from tools.bootstrap import ensure_host_importable, import_pack
from tools.paths import README

START, END = "<!-- nodes:start -->", "<!-- nodes:end -->"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _input_label(spec) -> str:
    name = spec.id
    return f"{name} (optional)" if getattr(spec, "optional", False) else name


def node_schemas() -> list:
    import_pack()
    ensure_host_importable()
    from guidance_lab.nodes.extension import NODES

    return [node.define_schema() for node in NODES]


def node_table(schemas) -> str:
    rows = ["| Node (id) | What it does | Inputs | Outputs |", "|---|---|---|---|"]
    for s in schemas:
        inputs = ", ".join(_input_label(i) for i in s.inputs) or "–"
        outputs = ", ".join(o.display_name or o.io_type for o in s.outputs) or "–"
        rows.append(f"| {_cell(s.display_name)} `{s.node_id}` | {_cell(s.description)} | {_cell(inputs)} "
                    f"| {_cell(outputs)} |")
    return "\n".join(rows)


def replace_between_markers(text: str, body: str) -> str:
    if START not in text or END not in text:
        raise ValueError(f"README lacks the markers {START} / {END}")
    head, rest = text.split(START, 1)
    _old, tail = rest.split(END, 1)
    return f"{head}{START}\n{body}\n{END}{tail}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when the table is stale")
    args = parser.parse_args(argv)
    current = README.read_text()
    wanted = replace_between_markers(current, node_table(node_schemas()))
    if wanted == current:
        print("README node table is up to date")
        return 0
    if args.check:
        print("README node table is stale: run `.host/venv/bin/python -m tools.readme_nodes`")
        return 1
    README.write_text(wanted)
    print(f"rewrote the node table in {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
