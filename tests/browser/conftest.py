"""Browser tests: the real ComfyUI frontend, served by one real ComfyUI server per
session, driven in Debian's headless Chromium (/usr/bin/chromium) by Playwright.

One browser page is shared by the whole session (loading the frontend takes seconds);
each test waits on conditions, never on fixed sleeps. On failure a test leaves a
screenshot and the page's console log in test-artifacts/browser/.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tools.host.comfy_server import ComfyServer
from tools.paths import REPO

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO / "test-artifacts"
VIEWPORT = {"width": 1920, "height": 1080}
TIMEOUT_MS = 60_000
UI_SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False,
               "Comfy.Graph.CanvasInfo": False, "LiteGraph.Canvas.MinFontSizeForLOD": 1}

# Console noise of this frontend that says nothing about the pack: the machine is offline
# (api.comfy.org does not resolve), a fresh user has no user.css / userdata files, the pack
# ships no template thumbnails (<name>.jpg), and the frontend's own start-up TypeError.
IGNORED_CONSOLE = [re.compile(p) for p in (
    r"net::ERR_NAME_NOT_RESOLVED", r"net::ERR_INTERNET_DISCONNECTED",
    r"Failed to cache media: /api/workflow_templates/[^ ]+\.(jpg|webp|png)",
)]
IGNORED_FAILED_URLS = [re.compile(p) for p in (
    r"^https?://(?!127\.0\.0\.1)",  # anything off this machine
    r"/api/userdata", r"/user\.css$", r"/api/workflow_templates/[^/]+/[^/]+\.(jpg|webp|png)$",
)]


class ConsoleLog:
    """Everything the page said: console messages, page errors, failed requests."""

    def __init__(self):
        self.entries: list[tuple[str, str, str]] = []  # (kind, text, url)

    def attach(self, page):
        page.on("console", lambda m: self.entries.append((m.type, m.text, (m.location or {}).get("url", ""))))
        page.on("pageerror", lambda e: self.entries.append(("pageerror", str(e), "")))
        page.on("response", lambda r: r.status >= 400 and self.entries.append(
            ("http", f"{r.status} {r.request.method} {r.url}", r.url)))
        page.on("requestfailed", lambda r: self.entries.append(
            ("requestfailed", f"{r.failure} {r.url}", r.url)))

    def mark(self) -> int:
        return len(self.entries)

    def problems(self, since: int = 0) -> list[str]:
        """Errors and warnings since ``since`` that are not known noise of this host."""
        found = []
        for kind, text, url in self.entries[since:]:
            if kind not in ("error", "warning", "pageerror", "http", "requestfailed"):
                continue
            if kind == "requestfailed" and "net::ERR_ABORTED" in text:
                continue  # the page cancelled it (a thumbnail or preview scrolled away, a dialog closed)
            if kind in ("http", "requestfailed") or text.startswith("Failed to load resource"):
                if any(p.search(url) for p in IGNORED_FAILED_URLS):
                    continue
            if any(p.search(text) for p in IGNORED_CONSOLE):
                continue
            found.append(f"{kind}: {text[:600]}")
        return found

    def dump(self) -> str:
        return "\n".join(f"[{kind}] {text}" + (f"  ({url})" if url else "") for kind, text, url in self.entries)


@pytest.fixture(scope="session")
def server(tmp_path_factory, sd15_checkpoint):
    workdir = tmp_path_factory.mktemp("comfy-browser-server")
    with ComfyServer(workdir, extra_model_paths={"checkpoints": str(sd15_checkpoint.parent)}) as srv:
        yield srv


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} missing: run `make provision` (its 'browser' step installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def console():
    return ConsoleLog()


@pytest.fixture(scope="session")
def page(browser, server, console):
    """The ComfyUI frontend, loaded and ready, in a fresh browser context (fresh profile)."""
    # a first-time user, minus the first-run templates dialog, with a quiet canvas for
    # screenshots (no minimap, no canvas info text, node text drawn at every zoom)
    settings = server.user_dir / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps(UI_SETTINGS))
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(TIMEOUT_MS)
    # nothing leaves this machine: answer outside requests at once instead of waiting on DNS
    context.route(re.compile(r"^https?://(?!127\.0\.0\.1[:/])"), lambda route: route.abort("internetdisconnected"))
    page = context.new_page()
    console.attach(page)
    page.goto(server.url("/"))
    page.wait_for_function("window.app && app.graph && app.canvas && app.vueAppReady && app.extensionManager",
                           timeout=120_000)
    yield page
    context.close()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(autouse=True)
def _artifacts_on_failure(request, console):
    yield
    failed = any(getattr(request.node, f"rep_{w}", None) is not None and getattr(request.node, f"rep_{w}").failed
                 for w in ("setup", "call"))
    if not failed or "page" not in request.fixturenames:
        return
    out = ARTIFACTS / "browser"
    out.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    (out / f"{name}.console.log").write_text(console.dump())
    try:
        request.getfixturevalue("page").screenshot(path=str(out / f"{name}.png"))
    except Exception as e:  # the page may be what broke
        (out / f"{name}.screenshot-error.txt").write_text(repr(e))
