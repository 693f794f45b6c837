"""The pack in the real ComfyUI frontend, as an artist meets it: node search and library,
the template browser, workflows on the canvas, a run queued from the UI, screenshots."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import time

import pytest
from PIL import Image
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tools.host.api_graph import API_WORKFLOWS, load
from tools.paths import REPO

pytestmark = pytest.mark.browser

UI_WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
PACK_CATEGORY = "Guidance Lab"
ARTIFACTS = REPO / "test-artifacts"
SCREENSHOTS = ARTIFACTS / "screenshots"
DOCS_SCREENSHOTS = REPO / "docs" / "screenshots"
UPDATE_DOCS = os.environ.get("GUIDANCE_LAB_UPDATE_SCREENSHOTS") == "1"
RUN_SIZE, RUN_STEPS = 64, 4
TIMEOUT_S = 60

NEXT_FRAME = "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"

GRAPH_STATE = """async () => {
    const nodes = app.graph._nodes.map(n => ({
        id: String(n.id), type: n.type, known: n.type in LiteGraph.registered_node_types,
        widgets: (n.widgets || []).map(w => [w.name, w.value]),
        widgets_values: n.serialize().widgets_values ?? [],
    }));
    let prompt = null, promptError = null;
    try { prompt = (await app.graphToPrompt()).output } catch (e) { promptError = String(e) }
    return {nodes, prompt, promptError};
}"""


def strip_meta(graph):
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in graph.items()}


def pack_node_defs(page):
    return page.evaluate("""() => Object.values(LiteGraph.registered_node_types)
        .map(t => t.nodeData).filter(d => d && String(d.python_module).endsWith('guidance_lab'))""")


def visible_dialogs(page) -> list[str]:
    return [d.inner_text() for d in page.locator("[role=dialog]:visible").all()]


def close_dialogs(page):
    """Close every open dialog with its own close button (Escape, if it has none)."""
    for _ in range(5):
        dialogs = page.locator("[role=dialog]:visible")
        if not dialogs.count():
            break
        dialog = dialogs.first
        close = dialog.locator("button[aria-label=Close], button.p-dialog-close-button, "
                               "button[data-pc-section=pcclosebutton], button:has(i.pi-times)")
        if close.count():
            close.first.click()
        else:
            page.keyboard.press("Escape")
        dialog.wait_for(state="hidden", timeout=10_000)
    page.locator(".p-dialog-mask").first.wait_for(state="detached", timeout=10_000)


def wait_for_graph(page, workflow):
    """Until the canvas holds exactly the file's nodes (ids and types). Ids compare as text:
    frontend 1.32 keeps a file's numeric ids, 1.49 turns them into strings."""
    expected = sorted([str(n["id"]), n["type"]] for n in workflow["nodes"])
    page.wait_for_function("""expected => {
        const got = app.graph._nodes.map(n => [String(n.id), n.type])
            .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
        return JSON.stringify(got) === JSON.stringify(expected);
    }""", arg=expected)
    page.evaluate(NEXT_FRAME)


def sidebar_tab(page, name):
    """A sidebar tab by its accessible name ("Templates", "Node Library (n)"): the visible
    caption is shorter on some frontends and soft-hyphenated on 1.49 ("Tem\xadplates")."""
    return page.get_by_role("button", name=re.compile(rf"^{name}\b")).first


def node_search_box(page):
    """The node search that a double click on the canvas opens: a combobox named by its
    placeholder, "Search Nodes..." on frontend 1.32, "Add a node..." on 1.49."""
    return page.get_by_role("combobox", name=re.compile(r"^(Search Nodes|Add a node)"))


def open_templates(page):
    sidebar_tab(page, "Templates").click()
    dialog = page.get_by_role("dialog").filter(has_text="EXTENSIONS").first
    dialog.get_by_text("guidance_lab", exact=True).first.click()
    return dialog


def load_from_template_browser(page, name, workflow):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    dialog = open_templates(page)
    card = dialog.get_by_test_id(f"template-workflow-{name}")
    card.scroll_into_view_if_needed()
    card.click()
    try:
        dialog.wait_for(state="hidden", timeout=20_000)
    except PlaywrightTimeout:
        # On loaded cores a click can land while the grid is still laying out its cards;
        # the second click is the user's retry, the checks below still judge the load.
        card.click()
        dialog.wait_for(state="hidden")
    wait_for_graph(page, workflow)


DECLARED_INPUTS = """(types) => Object.fromEntries(types.map(t => {
    const d = LiteGraph.registered_node_types[t]?.nodeData?.input ?? {};
    return [t, [...Object.keys(d.required ?? {}), ...Object.keys(d.optional ?? {})]];
}))"""


def declared_only(page, graph: dict) -> dict:
    """The graph without frontend-only widgets (PreviewAny's "preview" text box), which
    the UI queues but which are no inputs of the node."""
    declared = page.evaluate(DECLARED_INPUTS, sorted({str(n["class_type"]) for n in graph.values()}))
    return {k: {"class_type": n["class_type"],
                "inputs": {name: v for name, v in n["inputs"].items()
                           if name in declared.get(str(n["class_type"]), n["inputs"])}}
            for k, n in graph.items()}


def load_problems(page, console, mark, workflow, api_graph) -> list[str]:
    """Everything that says the workflow did not load as saved: console errors since
    ``mark``, open dialogs (missing nodes, ...), unknown node types, widget values that
    differ from the file, and a queued graph that differs from the API twin."""
    problems = [f"console {p}" for p in console.problems(mark)]
    problems += [f"dialog: {text[:300]!r}" for text in visible_dialogs(page)]
    state = page.evaluate(GRAPH_STATE)
    by_id = {n["id"]: n for n in state["nodes"]}
    for saved in workflow["nodes"]:
        node = by_id.get(str(saved["id"]))
        if node is None:
            problems.append(f"node {saved['id']} ({saved['type']}) not on the canvas")
            continue
        if not node["known"]:
            problems.append(f"node {saved['id']}: unknown node type {saved['type']!r}")
        if node["widgets_values"] != saved.get("widgets_values", []):
            problems.append(f"node {saved['id']} ({saved['type']}): widgets hold {node['widgets']}, "
                            f"the file saved {saved.get('widgets_values')}")
    if state["promptError"]:
        problems.append(f"graphToPrompt failed: {state['promptError']}")
    elif declared_only(page, strip_meta(state["prompt"])) != strip_meta(api_graph):
        queued = declared_only(page, strip_meta(state["prompt"]))
        diff = {k: (v, strip_meta(api_graph).get(k)) for k, v in queued.items()
                if v != strip_meta(api_graph).get(k)}
        problems.append(f"the UI would queue a graph that differs from the API twin: {diff}")
    return problems


# Fit the graph into the part of the canvas that no toolbar covers (at most 100 %), and
# answer the page area to crop to: the nodes plus a margin.
FIT_GRAPH = """() => {
    const ds = app.canvas.ds, rect = app.canvas.canvas.getBoundingClientRect();
    const free = {x0: 90, y0: 160, x1: rect.width - 30, y1: rect.height - 70}, pad = 24;
    const title = LiteGraph.NODE_TITLE_HEIGHT;
    const boxes = app.graph._nodes.map(n => [n.pos[0], n.pos[1] - title - 16, n.pos[0] + n.size[0], n.pos[1] + n.size[1]]);
    const [x0, y0] = [Math.min(...boxes.map(b => b[0])), Math.min(...boxes.map(b => b[1]))];
    const [x1, y1] = [Math.max(...boxes.map(b => b[2])), Math.max(...boxes.map(b => b[3]))];
    const scale = Math.min(1, (free.x1 - free.x0) / (x1 - x0), (free.y1 - free.y0) / (y1 - y0));
    const left = free.x0 + ((free.x1 - free.x0) - (x1 - x0) * scale) / 2;
    const top = free.y0 + ((free.y1 - free.y0) - (y1 - y0) * scale) / 2;
    ds.scale = scale;
    ds.offset[0] = left / scale - x0;
    ds.offset[1] = top / scale - y0;
    app.canvas.setDirty(true, true);
    return {x: rect.left + left - pad, y: rect.top + top - pad,
            width: (x1 - x0) * scale + 2 * pad, height: (y1 - y0) * scale + 2 * pad};
}"""


def screenshot(page, name):
    """The loaded graph, fitted to the view and cropped to its nodes."""
    clip = page.evaluate(FIT_GRAPH)
    page.evaluate(NEXT_FRAME)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), clip=clip)
    if UPDATE_DOCS:
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_SCREENSHOTS / f"{name}.png")
        # The template browser shows workflows/<name>.jpg as the card's picture.
        with Image.open(path) as shot:
            thumb = shot.convert("RGB")
            thumb.thumbnail((640, 640))
            thumb.save(REPO / "workflows" / f"{name}.jpg", quality=88)
    return path


# -- the node library and search ---------------------------------------------------------

def test_pack_nodes_are_defined_with_category_names_and_tooltips(page, server):
    info = server.get_json("/object_info")
    pack = {k: v for k, v in info.items() if v["python_module"].endswith("guidance_lab")}
    defs = {d["name"]: d for d in pack_node_defs(page)}
    assert pack and defs.keys() == pack.keys()
    for name, node_def in defs.items():
        assert node_def["category"].split("/")[0] == PACK_CATEGORY
        assert node_def["display_name"] == pack[name]["display_name"]
        for section in ("required", "optional"):
            for input_name, spec in (node_def["input"].get(section) or {}).items():
                assert spec[1].get("tooltip"), f"{name}.{input_name} has no tooltip in the UI"
                assert spec[1]["tooltip"] == pack[name]["input"][section][input_name][1]["tooltip"]


def test_node_search_box_finds_the_pack_nodes(page):
    names = sorted(d["display_name"] for d in pack_node_defs(page))
    page.evaluate("() => { app.graph.clear(); app.canvas.setDirty(true, true) }")
    canvas = page.locator("#graph-canvas")
    box = canvas.bounding_box()
    search = node_search_box(page)
    # A fresh-clone CI run once saw no search box in 60 s after one double click. LiteGraph
    # tells a double click from two clicks by the events' timestamps, which a busy page can
    # stamp apart; so the gesture is repeated, as a user would, before the test gives up.
    for attempt in range(3):
        canvas.dblclick(position={"x": box["width"] * 0.5, "y": box["height"] * 0.6})
        try:
            search.wait_for(state="visible", timeout=20_000)
            break
        except PlaywrightTimeout:
            if attempt == 2:
                raise
    search.fill(PACK_CATEGORY)
    options = page.get_by_role("option")
    page.wait_for_function("""names => { const t = [...document.querySelectorAll('[role=option]')]
        .map(o => o.innerText).join('\\n'); return names.every(n => t.includes(n)) }""", arg=names)
    texts = options.all_inner_texts()
    for name in names:
        shown = [t for t in texts if name in " ".join(t.split())]
        assert shown, f"{name} not in the search results {texts}"
        assert PACK_CATEGORY in shown[0], f"{name}: the result does not show its category: {shown[0]!r}"
    page.keyboard.press("Escape")
    search.wait_for(state="hidden")


SETTLE_S = 5.0


def test_node_library_lists_the_pack_nodes_under_its_category(page):
    defs = pack_node_defs(page)
    tab = sidebar_tab(page, "Node Library")
    tab.click()
    label = page.get_by_role("treeitem").get_by_text(PACK_CATEGORY, exact=True).first
    label.click()

    def under_the_pack(text):
        """The row showing ``text`` below the pack's folder on screen, as a person reads the
        library: 1.32 nests the pack's rows in its folder, 1.49 draws a flat virtual list whose
        rows are in no particular document order, so position is what both agree on."""
        rows = page.get_by_role("treeitem").get_by_text(text, exact=True)
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            top = label.bounding_box()["y"]
            for row in rows.all():
                box = row.bounding_box()
                if box and box["y"] > top and row.is_visible():
                    return row
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} is not shown under {PACK_CATEGORY} in the node library")
            page.evaluate(NEXT_FRAME)

    def pack_folder_to_top():
        # 1.49 renders only the rows in view: bring the pack's rows into it, as a user scrolls,
        # and give the list a moment to settle (its virtual rows move while it measures them).
        # Settling is not required: in CI the list once kept re-measuring for a minute, and
        # nothing below needs a still list (folders are toggled by a click event, rows found by
        # their position relative to the folder, retried until the deadline).
        label.evaluate("e => e.scrollIntoView({block: 'start'})")
        deadline, last = time.monotonic() + SETTLE_S, None
        while time.monotonic() < deadline:
            page.evaluate(NEXT_FRAME)
            box = label.bounding_box()
            if box == last:
                return
            last = box

    def toggle(row):
        # A click event on the visible row, not Playwright's click: its scroll-into-view of a row
        # in 1.49's virtual list makes the list re-measure, which moves the row again, and the
        # wait for a stable element then never ends (seen once in CI on a loaded machine).
        row.dispatch_event("click")

    by_folder = {}
    for node_def in defs:
        by_folder.setdefault(node_def["category"].split("/")[1], []).append(node_def["display_name"])
    for sub, names in sorted(by_folder.items()):
        pack_folder_to_top()
        toggle(under_the_pack(sub))
        for name in names:
            under_the_pack(name)
        pack_folder_to_top()
        toggle(under_the_pack(sub))  # folded again, so the next folder's rows are in view
    tab.click()


# -- the template browser and the canvas ------------------------------------------------

def test_template_browser_lists_every_ui_workflow(page):
    dialog = open_templates(page)
    for path in UI_WORKFLOWS:
        dialog.get_by_test_id(f"template-workflow-{path.stem}").wait_for(state="visible")
    cards = dialog.locator("[data-testid^=template-workflow-]").evaluate_all(
        "els => els.map(e => e.dataset.testid.replace('template-workflow-', ''))")
    assert sorted(cards) == sorted(p.stem for p in UI_WORKFLOWS)
    close_dialogs(page)


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_loads_from_the_template_browser(page, console, path):
    workflow = json.loads(path.read_text())
    close_dialogs(page)
    mark = console.mark()
    load_from_template_browser(page, path.stem, workflow)
    problems = load_problems(page, console, mark, workflow, load(API_WORKFLOWS / path.name))
    shot = screenshot(page, path.stem)
    assert not problems, "\n".join(problems)
    assert shot.stat().st_size > 10_000


def test_workflow_queued_from_the_ui_runs_and_shows_its_image(page, console, server, sd15_checkpoint):
    path = REPO / "workflows" / "cfg_guider.json"
    workflow = json.loads(path.read_text())
    close_dialogs(page)
    load_from_template_browser(page, path.stem, workflow)
    page.evaluate("""([ckpt, size, steps]) => {
        const set = (type, name, value) => { for (const node of app.graph._nodes.filter(n => n.type === type)) {
            const w = node.widgets.find(w => w.name === name); w.value = value; w.callback?.(value) } };
        set('CheckpointLoaderSimple', 'ckpt_name', ckpt);
        set('EmptyLatentImage', 'width', size); set('EmptyLatentImage', 'height', size);
        set('BasicScheduler', 'steps', steps);
        app.graph.setDirtyCanvas(true, true);
    }""", [sd15_checkpoint.name, RUN_SIZE, RUN_STEPS])
    mark = console.mark()
    page.get_by_role("button", name="Run", exact=True).first.click()
    image = page.locator("img[src*='/api/view?filename=cfg_guider_']").first
    image.wait_for(state="visible", timeout=300_000)
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [RUN_SIZE, RUN_SIZE]
    filename = re.search(r"filename=([^&]+)", image.get_attribute("src")).group(1)
    entries = [e for e in server.get_json("/history").values()
               if any(img["filename"] == filename for out in e.get("outputs", {}).values()
                      for img in out.get("images", []))]
    assert len(entries) == 1
    assert entries[0]["status"]["status_str"] == "success"
    assert not console.problems(mark), "\n".join(console.problems(mark))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "cfg_guider_after_run.png"))


# -- a broken workflow file is caught ---------------------------------------------------

def corrupt_unknown_node(workflow):
    node = next(n for n in workflow["nodes"] if n["type"] == "GuidanceLab_CFGGuider")
    node["type"] = "GuidanceLab_NoSuchGuider"
    return "GuidanceLab_NoSuchGuider"


def corrupt_shifted_widgets(workflow):
    node = next(n for n in workflow["nodes"] if n["type"] == "BasicScheduler")
    node["widgets_values"] = node["widgets_values"][1:] + node["widgets_values"][:1]
    return "BasicScheduler"


@pytest.mark.parametrize("corrupt", [corrupt_unknown_node, corrupt_shifted_widgets],
                         ids=["unknown_node", "shifted_widgets"])
def test_a_corrupted_workflow_is_detected(page, console, corrupt):
    path = REPO / "workflows" / "cfg_guider.json"
    workflow = json.loads(path.read_text())
    broken = copy.deepcopy(workflow)
    culprit = corrupt(broken)
    close_dialogs(page)
    mark = console.mark()
    page.evaluate("wf => app.loadGraphData(wf, true, true, 'corrupted_cfg_guider')", broken)
    wait_for_graph(page, broken)
    if corrupt is corrupt_unknown_node:
        # What the user is told: frontend 1.32's dialog lists the "missing nodes", 1.49's
        # toast says "2 errors found".
        page.get_by_text(re.compile(r"missing nodes|errors? found", re.I)).first.wait_for(state="visible")
    problems = load_problems(page, console, mark, broken, load(API_WORKFLOWS / path.name))
    close_dialogs(page)
    assert problems, "the corrupted workflow loaded without a detected problem"
    assert any(culprit in p for p in problems), problems
