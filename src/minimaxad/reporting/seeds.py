"""The page of a multi-seed run (``fit --seeds 1 11 111``): mean ± std per metric and per
category, each seed's own values, and links to each seed's full report."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Mapping

from minimaxad.metrics import METRIC_KEYS
from minimaxad.reporting.results import METRIC_HEADERS


def _cell(value: Any, std: Any = None) -> str:
    if value is None:
        return "<td>-</td>"
    text = f"{100 * float(value):.1f}"
    if std is not None:
        text += f" <span class=sd>± {100 * float(std):.1f}</span>"
    return f"<td>{text}</td>"


def write_seed_report(
    summary: Mapping[str, Any], path: Path, run_folders: Mapping[str, str], title: str = "minimaxad - seeds"
) -> Path:
    """``summary`` from :func:`minimaxad.reporting.results.seed_spread`; ``run_folders``
    ``{seed: folder relative to the page}`` (each holding that seed's report.html)."""
    cats, mean = summary["categories"], summary["mean"]
    spread, std = summary.get("categories_std", {}), summary.get("std", {})
    cols = [k for k in METRIC_KEYS if k in mean or any(k in r for r in cats.values())]
    head = "".join(f"<th>{METRIC_HEADERS[k]}</th>" for k in cols)
    rows = [
        f"<tr><th>{html.escape(n)}</th>" + "".join(_cell(r.get(k), spread.get(n, {}).get(k)) for k in cols) + "</tr>"
        for n, r in cats.items()
    ]
    rows.append("<tr class=mean><th>mean</th>" + "".join(_cell(mean.get(k), std.get(k)) for k in cols) + "</tr>")
    per_seed = []
    for seed, run in summary.get("runs", {}).items():
        link = run_folders.get(str(seed))
        label = (
            f"<a href='{html.escape(link)}/report.html'>seed {html.escape(str(seed))}</a>" if link else f"seed {seed}"
        )
        per_seed.append(f"<tr><th>{label}</th>" + "".join(_cell(run.get("mean", {}).get(k)) for k in cols) + "</tr>")
    seeds = ", ".join(str(s) for s in summary.get("seeds", []))
    page = f"""<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:2em}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}th:first-child{{text-align:left}}
.sd{{color:#777;font-size:90%}}tr.mean{{font-weight:bold}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Mean ± standard deviation (in %, population std) over the seeds {html.escape(seeds)}: the spread of
these runs, as the paper's error bars.</p>
<table><tr><th>category</th>{head}</tr>{"".join(rows)}</table>
<h2>Each seed (mean over categories)</h2>
<table><tr><th>run</th>{head}</tr>{"".join(per_seed)}</table>
</body></html>
"""
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path


__all__ = ["write_seed_report"]
