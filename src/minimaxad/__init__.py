"""MiniMaxAD: a lightweight autoencoder for feature-rich anomaly detection.

``from minimaxad import MiniMaxAD`` is resolved lazily so that light sub-packages
(``minimaxad.data``, ``minimaxad.metrics``) import without building the model code.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["MiniMaxAD", "list_backbones", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("MiniMaxAD", "list_backbones"):
        from minimaxad import models

        return getattr(models, name)
    raise AttributeError(f"module 'minimaxad' has no attribute {name!r}")
