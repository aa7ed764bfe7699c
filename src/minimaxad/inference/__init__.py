"""Deployment: the inference pipeline, its backends, export, prediction on files, the speed benchmark,
the HTTP service and the folder watcher.

* :mod:`~minimaxad.inference.pipeline` - network + maps + score (+ decision) as one module;
* :mod:`~minimaxad.inference.backends` - that pipeline on PyTorch, ONNX Runtime, OpenVINO, ...;
* :mod:`~minimaxad.inference.export` - ONNX / OpenVINO IR / TorchScript files with a parity check;
* :mod:`~minimaxad.inference.predict` - :class:`Predictor` and ``minimaxad predict``;
* :mod:`~minimaxad.inference.benchmark` - ``minimaxad benchmark``;
* :mod:`~minimaxad.inference.serve` - ``minimaxad serve``: HTTP API and web page, over
  :mod:`~minimaxad.inference.batching` (micro-batches of concurrent requests);
* :mod:`~minimaxad.inference.watch` - ``minimaxad watch``: score the images dropped into a folder.

Sub-modules are imported on use, so ``import minimaxad.inference`` stays light.
"""
