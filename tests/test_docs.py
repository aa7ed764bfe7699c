"""The documentation's links work, and the README stays a front page.

Every relative link in README.md and docs/*.md (``[text](path)``, ``[text](path#anchor)``,
``![alt](path)``, ``[text]: path``) must point to a file or folder of the repository, and an
``#anchor`` must name a heading of the target Markdown file, by GitHub's rule (lowercase; spaces
become ``-``; punctuation other than ``-`` and ``_`` is dropped; a repeated heading gets ``-1``,
``-2``...). External links (http, https, mailto) are not fetched. Standard library and pytest only.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 300

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_HTML_ANCHOR = re.compile(r"""<a\s+(?:name|id)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target "title") and ![alt](target); the text may hold one level of brackets
_INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'(][^)]*)?\)")
_REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$")
_EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading (before de-duplication)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()  # inline HTML tags
    text = re.sub(r"[^\w\- ]", "", text)  # \w: letters, digits and '_', any script
    return text.replace(" ", "-")


def _prose_lines(text: str):
    """``(line number, line)`` outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def anchors(markdown: Path) -> set[str]:
    """Every anchor a link may name in ``markdown``: its headings' ids and HTML anchors."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for _, line in _prose_lines(markdown.read_text(encoding="utf-8")):
        found.update(_HTML_ANCHOR.findall(line))
        match = _HEADING.match(line)
        if not match:
            continue
        anchor = github_anchor(match.group(2))
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        found.add(anchor if count == 0 else f"{anchor}-{count}")
    return found


def links(markdown: Path) -> list[tuple[int, str]]:
    """``(line number, target)`` of every link and image in ``markdown`` outside code."""
    out = []
    for number, line in _prose_lines(markdown.read_text(encoding="utf-8")):
        line = _CODE_SPAN.sub("", line)
        out.extend((number, target) for target in _INLINE_LINK.findall(line))
        definition = _REFERENCE_DEF.match(line)
        if definition:
            out.append((number, definition.group(1)))
    return out


def broken_links(markdown: Path, root: Path = ROOT) -> list[str]:
    """One message per link of ``markdown`` that points to no file of ``root`` or to no heading."""
    problems = []
    root = root.resolve()
    for number, target in links(markdown):
        where = f"{markdown.name}:{number}: ({target})"
        if not target or _EXTERNAL.match(target):
            if not target:
                problems.append(f"{where} empty link")
            continue
        path_part, _, anchor = target.partition("#")
        path_part = unquote(path_part.split("?", 1)[0])
        if path_part:
            destination = (markdown.parent / path_part).resolve()
            if root not in destination.parents and destination != root:
                problems.append(f"{where} points outside the repository")
                continue
            if not destination.exists():
                problems.append(f"{where} no such file: {destination.relative_to(root)}")
                continue
        else:
            destination = markdown.resolve()
        if anchor:
            if destination.is_dir() or destination.suffix.lower() != ".md":
                problems.append(f"{where} an anchor into a file that is not Markdown")
            elif unquote(anchor).lower() not in anchors(destination):
                problems.append(f"{where} no heading '#{anchor}' in {destination.relative_to(root)}")
    return problems


def documentation_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


@pytest.mark.parametrize("markdown", documentation_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_files_and_headings(markdown: Path):
    assert broken_links(markdown) == []


def test_readme_is_a_front_page():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    assert "bash scripts/demo.sh" in text
    assert "bash scripts/test.sh" in text  # CI runs the README's test command


def test_the_checker_reports_broken_links(tmp_path: Path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "photo.png").write_bytes(b"\x89PNG")
    (tmp_path / "other.md").write_text("# Other page\n\n## `minimaxad fit`: Options (all)\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n## Same\n\n## Same\n\n"
        "[ok](other.md) [ok](other.md#minimaxad-fit-options-all) [ok](#same-1) [ok](img/photo.png)\n"
        "![ok](img/photo.png) [ok](https://example.com/nowhere.md) [ok](img/)\n"
        "[missing](missing.md) ![missing image](img/nothing.png)\n"
        "[bad anchor](other.md#no-such-heading) [bad local anchor](#same-2)\n"
        "[ref]: other.md#other-page\n"
        "[bad ref]: gone.md\n"
        "```\n[in code](not-checked.md)\n```\n"
        "`[in a code span](not-checked-either.md)`\n",
        encoding="utf-8",
    )
    problems = broken_links(page, root=tmp_path)
    reported = " ".join(problems)
    assert len(problems) == 5, problems
    for target in ("missing.md", "img/nothing.png", "other.md#no-such-heading", "#same-2", "gone.md"):
        assert f"({target})" in reported


def test_github_anchor_rule():
    assert github_anchor("`minimaxad fit`") == "minimaxad-fit"
    assert (
        github_anchor("Training on several GPUs and machines (torchrun + DDP)")
        == "training-on-several-gpus-and-machines-torchrun--ddp"
    )
    assert github_anchor("Data: supported layouts, your own folders") == "data-supported-layouts-your-own-folders"
    assert github_anchor("fit_config and the_rest") == "fit_config-and-the_rest"
