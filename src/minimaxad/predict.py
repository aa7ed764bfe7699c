"""Public alias: ``from minimaxad.predict import Predictor`` (the code lives in :mod:`minimaxad.inference.predict`)."""

from minimaxad.inference.predict import Prediction, Predictor, predict_paths

__all__ = ["Predictor", "Prediction", "predict_paths"]
