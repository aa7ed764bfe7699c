"""Results for people: per-category tables and files, the HTML report, heatmap pictures.

* :mod:`~minimaxad.reporting.results` - metrics per category, their mean, ``metrics.json``/``.csv``, tables;
* :mod:`~minimaxad.reporting.html` - the self-contained HTML report (:func:`write_report`), its page and gallery;
* :mod:`~minimaxad.reporting.plots` - the report's plots as hand-written inline SVG (ROC, PR, histograms, colour bar);
* :mod:`~minimaxad.reporting.heatmaps` - colour maps, overlays and defect masks (numpy + Pillow only);
* :mod:`~minimaxad.reporting.saved` - ``evaluation.npz`` and re-rendering the report from it.
"""
