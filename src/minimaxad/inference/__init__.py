"""Deployment: the inference pipeline, its backends, export, prediction on files and the speed benchmark.

* :mod:`~minimaxad.inference.pipeline` - network + maps + score (+ decision) as one module;
* :mod:`~minimaxad.inference.backends` - that pipeline on PyTorch, ONNX Runtime, OpenVINO, ...;
* :mod:`~minimaxad.inference.export` - ONNX / OpenVINO IR / TorchScript files with a parity check;
* :mod:`~minimaxad.inference.predict` - :class:`Predictor` and ``minimaxad predict``;
* :mod:`~minimaxad.inference.benchmark` - ``minimaxad benchmark``.

Sub-modules are imported on use, so ``import minimaxad.inference`` stays light.
"""
