"""Public alias: ``from minimaxad.report import write_report`` (the code lives in :mod:`minimaxad.reporting.html`)."""

from minimaxad.reporting.html import ReportItem, write_report

__all__ = ["ReportItem", "write_report"]
