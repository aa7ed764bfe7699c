"""MiniMaxAD: a lightweight autoencoder for feature-rich anomaly detection."""

from minimaxad.models import MiniMaxAD, list_backbones

__all__ = ["MiniMaxAD", "list_backbones", "__version__"]
__version__ = "0.1.0"
