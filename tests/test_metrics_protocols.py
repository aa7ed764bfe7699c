"""The scripts' own evaluation rules against the authors' numbers: AeBAD-S ``evaluate()``
(reference/protocol_aebad.pt) and VisA's one-model-per-class max-pixel score
(reference/evaluation.pt ``results_max_pixel``), within 1e-6."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from minimaxad.anomaly_map import anomaly_map, image_score
from minimaxad.data import AnomalyDataset, Record
from minimaxad.data.transforms import Transform, relabel_cropped_mask
from minimaxad.engine.protocol import get_protocol
from minimaxad.metrics import evaluate
from minimaxad.metrics.aebad import evaluate_aebad


@pytest.fixture(scope="module")
def aebad(reference_dir):
    return torch.load(reference_dir / "protocol_aebad.pt", weights_only=True)


def _aebad_map(ref):
    protocol = get_protocol("aebad")
    return anomaly_map(
        ref["encoder_features"],
        ref["decoder_features"],
        ref["image_size"],
        merge=protocol.level_merge,
        smoothing=protocol.smoothing,
    )


def test_aebad_map_and_max_pixel_score(aebad):
    maps = _aebad_map(aebad)
    assert maps.shape == (24, 1, 64, 64) and maps.dtype == torch.float64
    assert (maps - aebad["anomaly_map_smoothed"].double()).abs().max().item() < 1e-6
    assert get_protocol("aebad").top_ratio == 0.0
    scores = image_score(maps, get_protocol("aebad").top_ratio)
    assert (scores - aebad["image_scores"].double()).abs().max().item() < 1e-6
    # the rule differs from the common path by far more than the tolerance
    common = anomaly_map(aebad["encoder_features"], aebad["decoder_features"], 64)
    assert (common.double() - aebad["anomaly_map_smoothed"].double()).abs().max().item() > 1e-2


def _reference_masks(ref) -> torch.Tensor:
    """``masks.astype(int)`` of the authors' evaluate(): only pixels equal to the max."""
    return torch.from_numpy(ref["masks"].numpy().astype(int) == 1)


def test_aebad_masks_and_relabelling_from_raw_masks(aebad):
    transform = Transform(aebad["mask_resize"], aebad["mask_crop"])
    masks, labels = [], []
    for raw, label in zip(aebad["raw_masks"], aebad["raw_labels"].tolist()):
        if label == 0:
            masks.append(torch.zeros(1, 64, 64))
            labels.append(0)
            continue
        mask, relabelled = relabel_cropped_mask(
            transform.center_crop(transform.resize_mask(raw.numpy())), "relabel-max"
        )
        masks.append(mask)
        labels.append(0 if relabelled else 1)
    masks = torch.stack(masks)
    assert labels == aebad["labels"].long().tolist()
    assert sum(a != b for a, b in zip(labels, aebad["raw_labels"].tolist())) == 3  # the crop removed 3 defects
    assert torch.equal(masks.bool(), _reference_masks(aebad))
    assert int(masks.sum()) == aebad["n_pixels_positive"] == 797
    # 'relabel-half' (evaluation_batch's > 0.5) keeps the soft edges too: more pixels
    half = relabel_cropped_mask(
        transform.center_crop(transform.resize_mask(aebad["raw_masks"][-1].numpy())), "relabel-half"
    )[0]
    assert half.sum() >= masks[-1].sum()


def test_aebad_dataset_applies_the_mask_rule(aebad, tmp_path):
    """The same masks and labels read from files by the dataset (resize 72, crop 64)."""
    records = []
    for i, (raw, label) in enumerate(zip(aebad["raw_masks"], aebad["raw_labels"].tolist())):
        image = tmp_path / f"{i}.png"
        Image.fromarray(np.full((96, 96, 3), 40 + i, np.uint8)).save(image)
        mask = None
        if label:
            mask = tmp_path / f"{i}_mask.png"
            Image.fromarray(raw.numpy(), "L").save(mask)
        records.append(
            Record(
                str(image), int(label), "AeBAD_S", "ablation" if label else "good", None if mask is None else str(mask)
            )
        )
    ds = AnomalyDataset(records, split="test", image_size=72, crop_size=64, mask_rule="relabel-max")
    items = [ds[i] for i in range(len(ds))]
    assert [it["label"] for it in items] == aebad["labels"].long().tolist()
    assert torch.equal(torch.stack([it["mask"] for it in items]).bool(), _reference_masks(aebad))
    plain = AnomalyDataset(records, split="test", image_size=72, crop_size=64)  # the common rule: no relabelling
    assert [plain[i]["label"] for i in range(len(plain))] == aebad["raw_labels"].long().tolist()


def test_aebad_metrics(aebad):
    for maps in (aebad["anomaly_map_smoothed"].double(), _aebad_map(aebad)):
        result = evaluate_aebad(maps, _reference_masks(aebad), aebad["labels"])
        assert result["i_auroc"] == pytest.approx(aebad["i_auroc"], abs=1e-6)
        assert result["p_auroc"] == pytest.approx(aebad["p_auroc"], abs=1e-6)
        assert len(result["aupro_per_image"]) == len(aebad["aupro_per_image"]) == 11
        assert np.abs(np.asarray(result["aupro_per_image"]) - np.asarray(aebad["aupro_per_image"])).max() < 1e-6
        assert result["aupro"] == pytest.approx(aebad["aupro_mean"], abs=1e-6)
    # a pooled AUPRO over all images is another number: the per-image mean is the rule
    pooled = evaluate(
        aebad["image_scores"], aebad["labels"], aebad["anomaly_map_smoothed"].double(), _reference_masks(aebad)
    )["aupro_200"]
    assert abs(pooled - aebad["aupro_mean"]) > 1e-3


def test_aebad_metrics_refuse_an_anomaly_without_mask(aebad):
    labels = aebad["raw_labels"]  # before relabelling: 3 anomalous items have empty masks
    with pytest.raises(ValueError, match="labelled anomalous but its mask is empty"):
        evaluate_aebad(aebad["anomaly_map_smoothed"], _reference_masks(aebad), labels)


def test_visa_single_class_scores_by_max_pixel(reference_dir):
    ref = torch.load(reference_dir / "evaluation.pt", weights_only=True)
    expected = ref["results_max_pixel"]
    protocol = get_protocol("visa-single")
    assert protocol.image_score == "max-pixel" and protocol.top_ratio == 0.0
    maps = anomaly_map(ref["encoder_features"], ref["decoder_features"], 64)
    scores = image_score(maps, protocol.top_ratio)
    assert (scores - expected["image_scores"]).abs().max().item() < 1e-6
    result = evaluate(scores, ref["labels"], maps, ref["masks"])
    for key in ("i_auroc", "i_ap", "i_f1max", "p_auroc", "p_ap", "p_f1max"):
        assert result[key] == pytest.approx(expected[key], abs=1e-6), key
    # AUPRO's thresholds move with float rounding of the maps: 1e-6 on the authors' own maps
    assert result["aupro_200"] == pytest.approx(expected["aupro_200_thresholds"], abs=1e-5)
    theirs = evaluate(expected["image_scores"], ref["labels"], ref["anomaly_map_smoothed"], ref["masks"])
    assert theirs["aupro_200"] == pytest.approx(expected["aupro_200_thresholds"], abs=1e-6)
    # the top-1% score of the other scripts gives other image metrics on the same maps
    top = evaluate(image_score(maps, 0.01), ref["labels"])
    assert top["i_auroc"] == pytest.approx(ref["results_top1pct_mean"]["i_auroc"], abs=1e-6)
    assert top["i_auroc"] != pytest.approx(expected["i_auroc"], abs=1e-3)
