"""The AeBAD-S evaluation of the authors' ``train_single_AeBAD.py`` (``evaluate()`` in their
utils/eval.py), which differs from the common path (``evaluation_batch``, :func:`evaluate`).

Given the maps of its rule (sum of levels, ``scipy.ndimage.gaussian_filter(sigma=4)``, see
:func:`minimaxad.anomaly_map.anomaly_map` with ``merge='sum'``) and the masks of the AeBAD-S
dataset rule (only max-valued pixels, crop-emptied anomalies relabelled normal, see
:func:`minimaxad.data.transforms.relabel_cropped_mask`):

- image score: the max pixel of each map;
- I-AUROC over the images, P-AUROC over all pixels of all images at once;
- AUPRO: each anomalous image's own 200-threshold AUPRO (thresholds from that image's min and
  max), then their mean: the AeBAD-S table's AUPRO.

The authors round each value to 3 decimals in their logs; these are unrounded.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ._inputs import ArrayLike, maps_3d
from .pro import aupro_200
from .ranking import auroc


def evaluate_aebad(anomaly_maps: ArrayLike, masks: ArrayLike, labels: ArrayLike) -> dict[str, Any]:
    """``{"i_auroc", "p_auroc", "aupro", "aupro_per_image", "image_scores"}`` of one test domain.

    anomaly_maps: (N, H, W) or (N, 1, H, W) float (float64 reproduces the authors' thresholds
    exactly); masks: same shape, anomalous where > 0.5; labels: (N,) 0/1 after relabelling.
    ``aupro_per_image`` follows the order of the anomalous items.
    """
    maps = torch.as_tensor(maps_3d(anomaly_maps, "anomaly_maps"))
    truth = torch.as_tensor(maps_3d(masks, "masks")) > 0.5
    y = torch.as_tensor(np.asarray(labels)).reshape(-1).long()
    if maps.shape != truth.shape:
        raise ValueError(
            f"masks have shape {tuple(truth.shape)} but anomaly_maps {tuple(maps.shape)}; "
            "give one mask per map, at the map's size"
        )
    if len(y) != maps.shape[0]:
        raise ValueError(f"{len(y)} labels for {maps.shape[0]} maps: give one label per test item")
    scores = maps.reshape(maps.shape[0], -1).amax(dim=1)
    per_image = []
    for i in torch.nonzero(y == 1).flatten().tolist():
        if not truth[i].any():
            raise ValueError(
                f"test item {i} is labelled anomalous but its mask is empty; the AeBAD-S rule "
                "relabels such items normal (data.transforms.relabel_cropped_mask)"
            )
        per_image.append(aupro_200(maps[i : i + 1], truth[i : i + 1]))
    return {
        "i_auroc": auroc(scores, y),
        "p_auroc": auroc(maps.reshape(-1), truth.reshape(-1)),
        "aupro": float(np.mean(per_image)) if per_image else float("nan"),
        "aupro_per_image": per_image,
        "image_scores": scores,
    }


__all__ = ["evaluate_aebad"]
