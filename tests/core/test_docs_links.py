"""Every relative link and image in the README and the docs pages resolves: the file exists and,
for a link to a heading (``page.md#heading``), the heading does too (GitHub's anchor rule)."""

import re
from pathlib import Path

import pytest

from tools.paths import DOCS, README, REPO

PAGES = sorted([README, REPO / "default_model" / "README.md", *DOCS.rglob("*.md")])
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_SRC = re.compile(r"<(?:img|a)\b[^>]*\b(?:src|href)=\"([^\"]+)\"", re.I)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def prose(text: str) -> str:
    """The Markdown without code blocks and inline code, where link syntax is not a link."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"<[^>]+>", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set:
    seen, out = {}, set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = anchor(match.group(1))
            n = seen.get(base, 0)
            out.add(base if n == 0 else f"{base}-{n}")
            seen[base] = n + 1
    return out


def links(page: Path) -> list:
    text = prose(page.read_text())
    return [m.group(1) for m in LINK.finditer(text)] + [m.group(1) for m in HTML_SRC.finditer(text)]


def test_the_pages_exist_and_have_links():
    assert README in PAGES and len(PAGES) >= 8
    assert sum(len(links(p)) for p in PAGES) > 30


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_image_resolves(page):
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...
            continue
        path, _, fragment = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif fragment and resolved.suffix == ".md" and fragment.lower() not in anchors(resolved):
            broken.append(f"{target} (no heading #{fragment} in {resolved.relative_to(REPO)})")
        elif path and REPO not in resolved.parents and resolved != REPO:
            broken.append(f"{target} (outside the repository)")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_anchor_rule():
    assert anchor("The methods, and where they differ from ComfyUI's") == \
        "the-methods-and-where-they-differ-from-comfyuis"
    assert anchor("Flow model (`guidance_lab_flow32`)") == "flow-model-guidance_lab_flow32"
    assert anchor("AGD, adapter guidance distillation") == "agd-adapter-guidance-distillation"
