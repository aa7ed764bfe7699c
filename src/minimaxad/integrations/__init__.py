"""MiniMaxAD inside other frameworks.

Each sub-module imports its framework and is imported by nothing else in the package, so
``import minimaxad`` never needs them: :mod:`minimaxad.integrations.anomalib` (the ``[anomalib]``
extra) makes MiniMaxAD an anomalib model.
"""
