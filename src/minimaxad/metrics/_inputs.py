"""Conversion and validation of metric inputs (numpy arrays, tensors or sequences).

Everything is converted to a detached torch tensor without copying where possible, so that
a numpy array or a CPU tensor of 113 M pixels is never duplicated just to be read.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence, Union

import numpy as np
import torch

ArrayLike = Union[torch.Tensor, np.ndarray, Sequence[float]]


def as_tensor(x: Any, name: str) -> torch.Tensor:
    """Detached tensor view of ``x`` (zero-copy for numpy arrays and tensors)."""
    if isinstance(x, torch.Tensor):
        return x.detach()
    arr = np.asarray(x)
    if arr.dtype == object or arr.dtype.kind in "USV":
        raise TypeError(f"{name} must be numeric (array or tensor), got dtype {arr.dtype}")
    if arr.dtype.byteorder == ">":  # torch only reads native byte order
        arr = arr.astype(arr.dtype.newbyteorder("="))
    with warnings.catch_warnings():
        # read-only arrays (e.g. np.load mmap) are fine: nothing here writes into the input
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.ascontiguousarray(arr))


def as_float(t: torch.Tensor) -> torch.Tensor:
    """Keep float32/float64 as they are (exactness); widen half precisions and integers."""
    if t.dtype in (torch.float32, torch.float64):
        return t
    if t.dtype in (torch.float16, torch.bfloat16):
        return t.float()
    return t.double()  # integers, bool: float64 holds every int32 exactly


def scores_1d(x: ArrayLike, name: str) -> torch.Tensor:
    """Flattened float scores; raises on NaN / infinity."""
    t = as_float(as_tensor(x, name)).reshape(-1)
    if t.numel() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(
            f"{name} contains {bad} NaN or infinite value(s); scores must be finite "
            "(check the model output for NaN before evaluating)"
        )
    return t


def binary_labels(x: ArrayLike, name: str) -> torch.Tensor:
    """Flattened bool labels; values must be exactly 0/1 (or bool)."""
    t = as_tensor(x, name).reshape(-1)
    if t.dtype == torch.bool:
        return t
    ok = (t == 0) | (t == 1)
    if not bool(ok.all()):
        bad = t[~ok][:5].tolist()
        raise ValueError(
            f"{name} must contain only 0 (normal) and 1 (anomalous), found e.g. {bad}; "
            "binarise them first (masks: `mask > 0.5`)"
        )
    return t != 0


def check_both_classes(labels: torch.Tensor, what: str) -> tuple[int, int]:
    """(n_pos, n_neg); raises when one class is missing (AUROC/AP are undefined then)."""
    n_pos = int(labels.sum())
    n_neg = labels.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        missing = "anomalous (1)" if n_pos == 0 else "normal (0)"
        raise ValueError(
            f"{what}: no {missing} sample among {labels.numel()}; AUROC, AP and F1 need "
            "both classes (evaluate a test set with normal and anomalous items)"
        )
    return n_pos, n_neg


def same_length(scores: torch.Tensor, labels: torch.Tensor, sname: str, lname: str) -> None:
    if scores.numel() != labels.numel():
        raise ValueError(
            f"{sname} has {scores.numel()} values but {lname} has {labels.numel()}; "
            "they must describe the same items in the same order"
        )


def maps_3d(x: ArrayLike, name: str) -> torch.Tensor:
    """(N, H, W) view of maps/masks given as (N, H, W), (N, 1, H, W) or a single (H, W)."""
    t = as_tensor(x, name)
    if t.dim() == 4 and t.shape[1] == 1:
        return t[:, 0]
    if t.dim() == 3:
        return t
    if t.dim() == 2:
        return t.unsqueeze(0)
    raise ValueError(f"{name} must have shape (N, H, W) or (N, 1, H, W), got {tuple(t.shape)}")


def binarise_masks(masks: torch.Tensor) -> torch.Tensor:
    """Bool masks: ``> 0.5`` like the authors (float {0,1} masks, 0/255 PNG masks both work)."""
    if masks.dtype == torch.bool:
        return masks
    return masks > 0.5
