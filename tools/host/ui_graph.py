"""UI-format workflows (what the ComfyUI canvas saves) from and to API-format graphs.

The UI format stores widget values positionally (``widgets_values``), in the order of
the node's widget inputs in ``/object_info``, with an extra "control" value after every
input that has ``control_after_generate`` (seeds). Building the UI files from the API
files with the server's own ``/object_info``, and checking the round trip in the tests,
keeps saved values in the inputs they belong to.
"""

from __future__ import annotations

from collections import defaultdict

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _inputs(spec: dict) -> list[tuple[str, str, dict]]:
    """(name, type, options) of every input of a node, in the UI's order."""
    out = []
    for section in ("required", "optional"):
        order = spec.get("input_order", {}).get(section) or list(spec["input"].get(section, {}))
        for name in order:
            entry = spec["input"][section][name]
            kind = "COMBO" if isinstance(entry[0], list) else entry[0]
            out.append((name, kind, entry[1] if len(entry) > 1 else {}))
    return out


def _is_widget(kind: str, options: dict) -> bool:
    return kind in WIDGET_TYPES and not options.get("forceInput")


def _columns(graph: dict) -> dict:
    """Layer the graph for drawing: sinks in the last column, every other node in the
    column just before its earliest consumer, so sources sit next to what reads them."""
    inputs = {k: [str(v[0]) for v in node["inputs"].values() if isinstance(v, list)] for k, node in graph.items()}
    depth: dict = {}

    def longest_path(node_id):
        if node_id not in depth:
            depth[node_id] = 1 + max((longest_path(n) for n in inputs[node_id]), default=-1)
        return depth[node_id]

    last = max(longest_path(k) for k in graph)
    consumers = {k: [c for c, ins in inputs.items() if k in ins] for k in graph}
    column: dict = {}

    def place(node_id):
        if node_id not in column:
            column[node_id] = min((place(c) - 1 for c in consumers[node_id]), default=last)
        return column[node_id]

    for node_id in graph:
        place(node_id)
    return column


def api_to_ui(graph: dict, object_info: dict) -> dict:
    column = _columns(graph)
    order = sorted(graph, key=lambda k: (column[k], int(k)))
    rows: dict = defaultdict(int)
    nodes, links, out_links = [], [], defaultdict(list)
    for position, node_id in enumerate(order):
        api = graph[node_id]
        spec = object_info[api["class_type"]]
        inputs, widgets, linked_widgets = [], [], []
        for name, kind, options in _inputs(spec):
            value = api["inputs"].get(name)
            if _is_widget(kind, options):
                if isinstance(value, list):  # a widget fed by a link (e.g. a file name from a node)
                    linked_widgets.append({"name": name, "type": kind, "widget": {"name": name}, "link": value})
                    value = options.get("default")
                widgets.append(value if value is not None else options.get("default"))
                if options.get("control_after_generate"):
                    widgets.append("fixed")
                continue
            inputs.append({"name": name, "type": kind, "link": value if isinstance(value, list) else None})
        inputs += linked_widgets  # the canvas lists converted widgets after the sockets
        for slot, entry in enumerate(inputs):
            if entry["link"] is not None:
                origin, origin_slot = str(entry["link"][0]), entry["link"][1]
                entry["link"] = len(links) + 1
                links.append([entry["link"], int(origin), origin_slot, int(node_id), slot, entry["type"]])
                out_links[(origin, origin_slot)].append(entry["link"])
        col = column[node_id]
        node = {"id": int(node_id), "type": api["class_type"], "pos": [40 + 360 * col, 40 + rows[col]],
                "size": [320, 130], "flags": {}, "order": position, "mode": 0, "inputs": inputs,
                "outputs": [], "properties": {"Node name for S&R": api["class_type"]},
                "widgets_values": widgets}
        # The next node of the column goes below this one: 220 px, or more for a tall node
        # (title, one row per socket or output, one per widget), so none hides another's widgets.
        rows[col] += max(220, 60 + 22 * max(len(inputs), len(spec["output"])) + 26 * len(widgets))
        title = api.get("_meta", {}).get("title")
        if title and title != spec.get("display_name"):
            node["title"] = title
        for slot, (kind, name) in enumerate(zip(spec["output"], spec.get("output_name", spec["output"]))):
            node["outputs"].append({"name": name, "type": kind, "links": [], "slot_index": slot})
        nodes.append(node)
    by_id = {n["id"]: n for n in nodes}
    for (origin, slot), ids in out_links.items():
        by_id[int(origin)]["outputs"][slot]["links"] = ids
    return {"last_node_id": max(by_id), "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 1, "offset": [0, 0]}}, "version": 0.4}


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """The API graph the UI would queue for ``workflow`` (no primitive/reroute nodes)."""
    links = {link[0]: link for link in workflow["links"]}
    graph = {}
    for node in workflow["nodes"]:
        spec = object_info[node["type"]]
        values = list(node.get("widgets_values", []))
        inputs = {}
        for name, kind, options in _inputs(spec):
            if _is_widget(kind, options):
                inputs[name] = values.pop(0)
                if options.get("control_after_generate"):
                    values.pop(0)
        for entry in node.get("inputs", []):
            if entry.get("link") is not None:
                link = links[entry["link"]]
                inputs[entry["name"]] = [str(link[1]), link[2]]
        if values:
            raise ValueError(f"node {node['id']} ({node['type']}): {len(values)} widget values left over")
        graph[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return graph
