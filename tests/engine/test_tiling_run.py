"""Tiled runs end to end: fit, test's maps = predict's maps, exported files, the service's batches,
photos of different sizes in the metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from minimaxad.data import build_dataset
from minimaxad.data.tiles import PhotoTiler, TrainingTiles, upright_size
from minimaxad.data.transforms import Transform
from minimaxad.engine.checkpoint import model_from_checkpoint, read_checkpoint, save_checkpoint
from minimaxad.engine.config import RunConfig
from minimaxad.engine.scoring import run_dataset
from minimaxad.inference.predict import Predictor, TilingOverrides
from minimaxad.metrics import auroc, evaluate, seg_f1
from minimaxad.tiling import Tiling
from tests.data.helpers import photo

# non-square photos of different sizes, none a multiple of the tile
SIZES = [(70, 52), (58, 75), (90, 40), (47, 47)]


def make_tree(root: Path) -> Path:
    """MVTec layout, one category, with a dark scratch drawn where the mask is."""
    seed = 0
    for split, folder, count in (("train", "good", 8), ("test", "good", 3), ("test", "scratch", 4)):
        for i in range(count):
            seed += 1
            width, height = SIZES[seed % len(SIZES)]
            image = Image.fromarray(photo((width, height), seed))
            path = root / "plate" / split / folder / f"{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            if folder == "scratch":
                mask = Image.new("L", (width, height), 0)
                box = (width // 3, height // 3, width // 3 + 9, height // 3 + 3)
                ImageDraw.Draw(image).rectangle(box, fill=(10, 10, 10))
                ImageDraw.Draw(mask).rectangle(box, fill=255)
                mask_path = root / "plate" / "ground_truth" / folder / f"{i:03d}_mask.png"
                mask_path.parent.mkdir(parents=True, exist_ok=True)
                mask.save(mask_path)
            image.save(path)
    return root


@pytest.fixture(scope="module")
def tiled_run(tmp_path_factory, single_thread_module):
    from minimaxad.cli import main

    base = tmp_path_factory.mktemp("tiled")
    root = make_tree(base / "data")
    out = base / "run"
    argv = ["fit", "--data", str(root), "--output", str(out), "--backbone", "unireplknet_micro"]
    argv += ["--encoder-weights", "none", "--tile-size", "32", "--tile-stride", "24", "--batch-size", "4"]
    argv += ["--max-steps", "3", "--val-fraction", "0.25", "--device", "cpu", "--quiet"]
    assert main(argv) == 0
    return root, out


def test_fit_stores_the_tiling_and_reports_the_deployment_metrics(tiled_run):
    root, out = tiled_run
    config = json.loads((out / "config.json").read_text())
    assert (config["tile_size"], config["tile_stride"], config["image_size"]) == (32, 24, 32)
    state = read_checkpoint(out / "plate" / "checkpoint.pt")
    assert state["tiling"] == Tiling(32, 24, None, 32).to_dict()
    metrics = json.loads((out / "metrics.json").read_text())["categories"]["plate"]
    for key in ("i_auroc", "p_auroc", "aupro", "seg_f1", "seg_f1_max"):
        assert 0 <= metrics[key] <= 1, key
    # the calibrated pixel threshold came from tiled photos at their own resolution
    assert state["thresholds"]["pixel"]["value"] > 0


def test_predict_gives_the_maps_test_computes(tiled_run):
    root, out = tiled_run
    checkpoint = out / "plate" / "checkpoint.pt"
    state = read_checkpoint(checkpoint)
    model = model_from_checkpoint(state)
    dataset = build_dataset("mvtec", root, split="test", image_size=32)
    tiling = Tiling.from_dict(state["tiling"])
    outputs = run_dataset(model, dataset, tiling=tiling, batch_size=5, device="cpu")
    assert outputs.sizes is not None  # photos of different sizes: padded with their sizes
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    assert predictor.tiling == tiling
    result = predictor.predict(dataset.paths, batch_size=3)
    for i, path in enumerate(dataset.paths):
        width, height = upright_size(path)
        assert result.maps[i].shape == (height, width)
        assert tuple(outputs.sizes[i]) == (height, width)
        np.testing.assert_allclose(result.maps[i], outputs.map(i).numpy(), rtol=0, atol=1e-5)
        assert outputs.maps[i, height:].abs().sum() == 0 and outputs.maps[i, :, width:].abs().sum() == 0
    np.testing.assert_allclose(result.scores, outputs.scores, rtol=1e-5)
    assert [m.shape for m in result.defect_masks] == [m.shape for m in result.maps]


def test_overlapping_tiles_at_inference_change_the_stride_only(tiled_run):
    root, out = tiled_run
    predictor = Predictor.from_checkpoint(
        out / "plate" / "checkpoint.pt", device="cpu", tiling=TilingOverrides(tile_stride=16)
    )
    assert predictor.tiling == Tiling(32, 16, None, 32)
    photo_path = sorted((root / "plate" / "test" / "scratch").glob("*.png"))[0]
    assert predictor.predict([photo_path]).maps[0].shape == upright_size(photo_path)[::-1]


def test_an_exported_tiled_model_gives_the_maps_of_pytorch(tiled_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from minimaxad.inference.export import export, read_metadata

    root, out = tiled_run
    checkpoint = out / "plate" / "checkpoint.pt"
    path = export(checkpoint, tmp_path / "model.onnx")
    meta = read_metadata(path)
    assert meta["tiling"] == read_checkpoint(checkpoint)["tiling"] and meta["outputs"] == ["anomaly_map", "image_score"]
    photos = sorted((root / "plate" / "test").rglob("*.png"))
    exported = Predictor.from_checkpoint(path).predict(photos)
    reference = Predictor.from_checkpoint(checkpoint, device="cpu").predict(photos)
    for a, b in zip(exported.maps, reference.maps):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(exported.scores, reference.scores, rtol=1e-4)
    # a file exported without tiling cannot be run on tiles: its graph smooths whole-photo maps
    state = read_checkpoint(checkpoint)
    whole = save_checkpoint(
        tmp_path / "whole.pt", {**state, "tiling": None, "config": {**state["config"], "tile_size": None}}
    )
    plain = export(whole, tmp_path / "whole.onnx")
    assert read_metadata(plain)["tiling"] is None and Predictor.from_checkpoint(plain).tiling is None
    with pytest.raises(ValueError, match="exported without tiling"):
        Predictor.from_checkpoint(plain, tiling=TilingOverrides(tile_size=32))
    with pytest.raises(ValueError, match="need --tile-size"):
        TilingOverrides(tile_stride=8).apply(None, 32)


def test_the_service_batches_tiles_as_predict_does(tiled_run):
    from minimaxad.inference.batching import MicroBatcher

    root, out = tiled_run
    predictor = Predictor.from_checkpoint(out / "plate" / "checkpoint.pt", device="cpu")
    photos = [Image.open(p).convert("RGB") for p in sorted((root / "plate" / "test").rglob("*.png"))[:3]]
    expected = predictor.predict(photos)
    batcher = MicroBatcher(predictor, max_batch=4, max_wait_ms=50).start()
    try:
        assert batcher.wait_ready(60) and batcher.warmup_error is None
        futures = batcher.submit([predictor.tiler.cut(p) for p in photos], [None] * len(photos))
        scored = [f.result(timeout=60) for f in futures]
    finally:
        batcher.close(timeout=10)
    for i, item in enumerate(scored):
        assert item.score == pytest.approx(float(expected.scores[i]), rel=1e-5)
        np.testing.assert_allclose(item.anomaly_map, expected.maps[i], atol=1e-5)


def test_photos_of_different_sizes_count_only_their_own_pixels(tiled_run):
    root, out = tiled_run
    state = read_checkpoint(out / "plate" / "checkpoint.pt")
    dataset = build_dataset("mvtec", root, split="test", image_size=32)
    outputs = run_dataset(model_from_checkpoint(state), dataset, tiling=Tiling.from_dict(state["tiling"]), device="cpu")
    maps = torch.cat([outputs.map(i).reshape(-1) for i in range(len(outputs.scores))])
    valid = outputs.valid
    masks = torch.cat([outputs.masks[i][valid[i]] for i in range(len(outputs.scores))])
    assert masks.any() and int(valid.sum()) == maps.numel()
    result = evaluate(outputs.scores, outputs.labels, outputs.maps, outputs.masks, valid=valid, pixel_threshold=0.3)
    assert result["p_auroc"] == pytest.approx(auroc(maps, masks), abs=1e-12)
    assert result["seg_f1"] == pytest.approx(seg_f1(maps[None], masks[None], 0.3), abs=1e-12)
    # without `valid` the padding would count as normal pixels scored 0
    padded = evaluate(outputs.scores, outputs.labels, outputs.maps, outputs.masks)
    assert padded["p_auroc"] != pytest.approx(result["p_auroc"], abs=1e-9)


def test_a_tile_is_the_whole_photo_path_on_the_same_pixels():
    image = Image.fromarray(photo((96, 64), 5))
    tiling = Tiling(32, 32)
    tiled = PhotoTiler(tiling).cut(image)
    assert len(tiled.boxes) == 6 and tiled.tiles.shape == (6, 3, 32, 32)
    box = tiled.boxes[4]
    crop = image.crop((box.left, box.top, box.left + 32, box.top + 32))
    assert torch.equal(tiled.tiles[4], Transform(32)(crop))  # same float32 arithmetic as the whole-photo path
    small = PhotoTiler(Tiling(64, image_size=32, resize_long_side=48)).cut(image)
    assert (small.height, small.width) == (32, 48) and small.tiles.shape == (1, 3, 32, 32)


def test_training_tiles_enumerate_every_tile_in_a_seeded_order(tiled_run, tmp_path):
    root, _ = tiled_run
    dataset = build_dataset("mvtec", root, split="train", image_size=32)
    tiles = TrainingTiles(dataset, Tiling(32, 24))
    expected = sum(Tiling(32, 24).count(*upright_size(p)) for p in dataset.paths)
    assert len(tiles) == expected
    order = tiles.epoch_order(torch.Generator().manual_seed(7))
    assert sorted(order) == list(range(len(tiles)))
    assert order == tiles.epoch_order(torch.Generator().manual_seed(7))
    assert order != tiles.epoch_order(torch.Generator().manual_seed(8))
    item = tiles[order[0]]
    assert item["image"].shape == (3, 32, 32) and item["label"] == 0
    photo_index, box = tiles.items[order[0]]
    assert item["path"] == dataset.paths[photo_index]
    assert len(tiles._cache) <= tiles._cache_size


def test_settings_tiling_cannot_combine_with_are_refused():
    with pytest.raises(ValueError, match="--crop-size"):
        RunConfig(tile_size=64, crop_size=56).tiling()
    with pytest.raises(ValueError, match="paper preset"):
        RunConfig(tile_size=64, protocol={"name": "x"}).tiling()
    with pytest.raises(ValueError, match="need --tile-size"):
        RunConfig(tile_stride=32).tiling()
    assert RunConfig().tiling() is None


def test_the_tiled_benchmark_reports_photos_tiles_and_the_stitching_share(tmp_path, single_thread):
    from minimaxad.cli import main

    output = tmp_path / "bench.json"
    argv = ["benchmark", "--tile-size", "32", "--tile-stride", "24", "--photo-size", "100x70", "--backends", "fused"]
    argv += ["--backbones", "unireplknet_micro", "--batch-sizes", "4", "--seconds", "0.05", "--output", str(output)]
    assert main(argv) == 0
    report = json.loads(output.read_text())
    (row,) = report["rows"]
    assert row["tiles_per_photo"] == Tiling(32, 24).count(100, 70) == 4 * 3
    assert row["tiles_per_second"] == pytest.approx(row["photos_per_second"] * 12)
    assert 0 < row["stitch_share"] < 1 and row["network_ms"] > 0
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        main(["benchmark", "--tile-size", "32", "--photo-size", "100", "--debug"])


def test_the_http_service_tiles_photos_as_predict_does(tiled_run):
    pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")
    import io

    from minimaxad.inference.serve import ServeSettings, build_service
    from tests.inference.test_serve import ThreadServer, multipart, request

    root, out = tiled_run
    checkpoint = out / "plate" / "checkpoint.pt"
    paths = sorted((root / "plate" / "test").rglob("*.png"))[:2]
    expected = Predictor.from_checkpoint(checkpoint, device="cpu").predict(paths)
    files = [(p.name, p.read_bytes()) for p in paths]
    settings = ServeSettings(workers_threads=1, max_batch=4)
    with ThreadServer(build_service(checkpoint, device="cpu", settings=settings)) as running:
        body, content_type = multipart(files, {"return": "heatmap"})
        status, _, answer = request(running.port, "POST", "/v1/predict", body, {"Content-Type": content_type})
        assert status == 200, answer
        results = json.loads(answer)["results"]
        for result, score, path in zip(results, expected.scores, paths):
            assert result["score"] == pytest.approx(float(score), rel=1e-5)
            heatmap = Image.open(io.BytesIO(__import__("base64").b64decode(result["heatmap_png"])))
            assert heatmap.size == upright_size(path)
        # a photo whose tiles would not fit the memory budget is refused up front
        small = ServeSettings(workers_threads=1, max_pixels=5000, max_decoded_pixels=5000)
        app = build_service(checkpoint, device="cpu", settings=small)
    with ThreadServer(app) as small:
        status, _, answer = request(small.port, "POST", "/v1/predict", files[0][1], {"Content-Type": "image/png"})
        assert status == 413 and b"tiling" in answer


def test_watch_scores_dropped_photos_with_the_tiling(tiled_run, tmp_path):
    from minimaxad.cli import main

    root, out = tiled_run
    inbox = tmp_path / "in"
    inbox.mkdir()
    paths = sorted((root / "plate" / "test" / "scratch").glob("*.png"))[:2]
    for path in paths:
        (inbox / path.name).write_bytes(path.read_bytes())
    results = tmp_path / "out"
    argv = ["watch", str(inbox), "--output", str(results), "--checkpoint", str(out / "plate" / "checkpoint.pt")]
    assert main(argv + ["--once", "--settle-seconds", "0", "--device", "cpu"]) == 0
    expected = Predictor.from_checkpoint(out / "plate" / "checkpoint.pt", device="cpu").predict(paths)
    written = sorted(results.rglob("*.png"))
    assert written, "no heatmaps or masks written"
    rows = [json.loads(line) for f in results.rglob("*.jsonl") for line in f.read_text().splitlines() if line.strip()]
    scores = {r["file"]: r["score"] for r in rows if "score" in r}
    for path, score in zip(paths, expected.scores):
        assert scores[path.name] == pytest.approx(float(score), rel=1e-5)


def test_predict_command_reads_photos_a_batch_of_tiles_at_a_time(tiled_run, tmp_path, monkeypatch):
    import csv

    from minimaxad.cli import main
    from minimaxad.inference import predict as predict_module

    root, out = tiled_run
    checkpoint = out / "plate" / "checkpoint.pt"
    folder = root / "plate" / "test"
    chunks: list[int] = []
    original = predict_module._read_photos
    monkeypatch.setattr(
        predict_module,
        "_read_photos",
        lambda predictor, chunk, failed: (chunks.append(len(chunk)), original(predictor, chunk, failed))[1],
    )
    argv = ["predict", "--checkpoint", str(checkpoint), str(folder), "--output", str(tmp_path / "p")]
    assert main(argv + ["--batch-size", "9", "--device", "cpu", "--quiet"]) == 0
    paths = sorted(folder.rglob("*.png"))
    tiling = Tiling(32, 24)
    counts = [tiling.count(*upright_size(p)) for p in paths]
    assert sum(chunks) == len(paths) and len(chunks) > 1
    assert max(chunks) < len(paths) and all(c * min(counts) <= max(9, max(counts)) for c in chunks)
    rows = {r["path"]: float(r["score"]) for r in csv.DictReader((tmp_path / "p" / "scores.csv").open())}
    expected = Predictor.from_checkpoint(checkpoint, device="cpu").predict(paths)
    for path, score in zip(paths, expected.scores):
        assert rows[str(path)] == pytest.approx(float(score), rel=1e-5)
