"""The report page's skeleton and style sheet are package data (``minimaxad/reporting/static``),
inlined into every report."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import numpy as np

from minimaxad.reporting.html import ReportItem, write_report

STATIC = resources.files("minimaxad.reporting") / "static"


def _page(tmp_path: Path, title: str) -> str:
    items = [
        ReportItem(path=f"{i}.png", category="c", label=i % 2, score=i / 10, anomaly_map=np.zeros((4, 4), np.float32))
        for i in range(6)
    ]
    return write_report(tmp_path / "r.html", metrics={}, items=items, title=title, max_gallery=0).read_text(
        encoding="utf-8"
    )


def test_style_sheet_and_template_come_from_package_data(tmp_path: Path) -> None:
    css = (STATIC / "report.css").read_text(encoding="utf-8")
    template = (STATIC / "report.html").read_text(encoding="utf-8")
    assert "svg .thr" in css and "$css" in template and "$sections" in template
    page = _page(tmp_path, "T")
    assert f"<style>\n{css}</style>" in page  # inlined whole: the page needs no other file
    assert page.startswith("<!DOCTYPE html>") and page.endswith("</body></html>\n")


def test_every_placeholder_is_filled_and_values_are_not_template_text(tmp_path: Path) -> None:
    page = _page(tmp_path, "costs $5 ${title} $$")
    assert "costs $5 ${title} $$" in page  # a value is inserted as it is, never expanded again
    without_title = page.replace("costs $5 ${title} $$", "")
    assert not re.search(r"\$\{?[a-z_]+", without_title), "a template placeholder was left in the page"
    header = re.search(r"<header>(.*?)</header>", page, re.S).group(1)
    assert "6 images (6 labelled) · categories: c" in header and '<nav><a href="#metrics">' in header
