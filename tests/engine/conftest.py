from __future__ import annotations

TINY = [
    "--backbone",
    "unireplknet_micro",
    "--encoder-weights",
    "none",
    "--image-size",
    "64",
    "--batch-size",
    "4",
    "--quiet",
]
