"""Training losses of MiniMaxAD.

* :func:`global_cosine_loss` - MiniMaxAD-fp: cosine distance of whole flattened feature maps.
* :func:`adc_loss` - MiniMaxAD-fr: adaptive contraction loss on the training anomaly map.
* :func:`local_loss` (eq. 7) and :func:`local_hm_loss` (eq. 9) - ablations.

Feature lists hold three maps ``(B, C_k, H_k, W_k)``; every loss returns a scalar tensor.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from minimaxad.anomaly_map import training_anomaly_map

TORCH_QUANTILE_LIMIT = 1 << 24  # torch.quantile refuses inputs with more elements


def quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """``torch.quantile(values.flatten(), q)`` (linear interpolation) for inputs of any size.

    Below torch's limit it calls torch.quantile; above it selects the two order statistics with
    ``topk``/``kthvalue`` and interpolates with the same float arithmetic, so values agree.
    """
    flat = values.reshape(-1)
    n = flat.numel()
    if n == 0:
        raise ValueError("quantile of an empty tensor")
    if n <= TORCH_QUANTILE_LIMIT:
        return torch.quantile(flat, q)
    # torch computes the rank in the input's dtype: (q as a tensor) * (n - 1)
    rank = torch.tensor(q, dtype=flat.dtype, device=flat.device) * (n - 1)
    below = int(torch.floor(rank).item())
    above = int(torch.ceil(rank).item())
    weight = rank - below
    from_top = n - below  # order statistics needed counted from the largest one
    if from_top <= 1 << 20:
        top = flat.topk(from_top, largest=True, sorted=True).values  # descending
        v_below, v_above = top[from_top - 1], top[n - 1 - above]
    else:
        v_below = flat.kthvalue(below + 1).values
        v_above = flat.kthvalue(above + 1).values
    return torch.lerp(v_below, v_above, weight)


def global_cosine_loss(
    encoder_features: Sequence[torch.Tensor], decoder_features: Sequence[torch.Tensor]
) -> torch.Tensor:
    """``sum_k mean_b (1 - cos(flatten(f_E^k[b]), flatten(f_D^k[b])))`` (MiniMaxAD-fp)."""
    loss = 0.0
    for e, d in zip(encoder_features, decoder_features):
        loss = loss + (1 - F.cosine_similarity(e.reshape(e.shape[0], -1), d.reshape(d.shape[0], -1), dim=1)).mean()
    return loss


def adc_threshold(
    score_map: torch.Tensor, p_hard: float = 0.9999, p_lim: float = 0.9995, limit_batch_size: float | None = None
) -> tuple[torch.Tensor, str, int, float]:
    """The ADC selection threshold ``t`` on ``S^2``, the branch taken, ``A`` and ``B``.

    ``sigma = std(S)``; ``alpha = quantile(S, p_hard)``; ``A = #(S^2 >= alpha - sigma^2)``;
    ``B = batch*H*W*(1 - p_lim)``; ``t = alpha - sigma^2`` if ``A >= B`` ('hard') else
    ``quantile(S^2, p_lim) - sigma^2`` ('lim').

    ``batch`` in ``B`` is ``limit_batch_size`` when given: the authors compute their
    ``num_lim`` once from the NOMINAL batch size, so a short last batch (fewer pixels) is
    compared against the full batch's limit and falls back to the ``p_lim`` quantile more
    often. None: the images of this map (``score_map.shape[0]``).
    """
    with torch.no_grad():
        s = score_map.detach()
        squared = s * s
        variance = s.std() ** 2
        alpha = quantile(s, p_hard)
        pixels_above_hard = int((squared >= alpha - variance).sum().item())
        batch = s.shape[0] if limit_batch_size is None else limit_batch_size
        min_pixels = batch * s.shape[-2] * s.shape[-1] * (1 - p_lim)  # the authors' float, unrounded
        if pixels_above_hard >= min_pixels:
            return alpha - variance, "hard", pixels_above_hard, min_pixels
        return quantile(squared, p_lim) - variance, "lim", pixels_above_hard, min_pixels


def adc_loss(
    encoder_features: Sequence[torch.Tensor],
    decoder_features: Sequence[torch.Tensor],
    image_size: int | Sequence[int],
    p_hard: float = 0.9999,
    p_lim: float = 0.9995,
    return_details: bool = False,
    limit_batch_size: float | None = None,
):
    """Adaptive contraction loss (MiniMaxAD-fr): mean of ``S^2`` over the pixels with
    ``S^2 >= t`` (see :func:`adc_threshold`, also for ``limit_batch_size``: the nominal batch
    size of the pixel limit, None for this batch's); gradient flows only through those pixels.

    With ``return_details=True`` returns ``(loss, {"branch", "pixels_above_hard", "min_pixels",
    "threshold"})``.
    """
    score_map = training_anomaly_map(encoder_features, decoder_features, image_size)
    threshold, branch, above, min_pixels = adc_threshold(score_map, p_hard, p_lim, limit_batch_size)
    squared = score_map * score_map
    loss = squared[squared >= threshold].mean()
    if return_details:
        return loss, {
            "branch": branch,
            "pixels_above_hard": above,
            "min_pixels": min_pixels,
            "threshold": float(threshold),
        }
    return loss


def local_loss(
    encoder_features: Sequence[torch.Tensor], decoder_features: Sequence[torch.Tensor], image_size: int | Sequence[int]
) -> torch.Tensor:
    """Eq. 7: mean of ``S^2`` over all pixels."""
    return training_anomaly_map(encoder_features, decoder_features, image_size).pow(2).mean()


def local_hm_loss(
    encoder_features: Sequence[torch.Tensor],
    decoder_features: Sequence[torch.Tensor],
    image_size: int | Sequence[int],
    p_lim: float = 0.9995,
) -> torch.Tensor:
    """Eq. 9 (fixed hard mining): mean of ``S^2`` over ``S^2 >= quantile(S^2, p_lim)``."""
    squared = training_anomaly_map(encoder_features, decoder_features, image_size).pow(2)
    return squared[squared >= quantile(squared.detach(), p_lim)].mean()


LOSSES = ("adc", "global", "local", "local-hm")


def compute_loss(
    name: str,
    encoder_features: Sequence[torch.Tensor],
    decoder_features: Sequence[torch.Tensor],
    image_size: int | Sequence[int],
    p_hard: float = 0.9999,
    p_lim: float = 0.9995,
    limit_batch_size: float | None = None,
) -> torch.Tensor:
    """Dispatch by name: ``adc``, ``global``, ``local`` or ``local-hm``.

    ``limit_batch_size`` (ADC only): the batch size of the ADC pixel limit, the nominal one in
    the authors' scripts; None: the batch's own size (see :func:`adc_threshold`).
    """
    if name == "adc":
        return adc_loss(
            encoder_features, decoder_features, image_size, p_hard, p_lim, limit_batch_size=limit_batch_size
        )
    if name == "global":
        return global_cosine_loss(encoder_features, decoder_features)
    if name == "local":
        return local_loss(encoder_features, decoder_features, image_size)
    if name in ("local-hm", "local_hm"):
        return local_hm_loss(encoder_features, decoder_features, image_size, p_lim)
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
