"""MiniMaxAD inside anomalib (minimaxad.integrations.anomalib): anomalib's Engine, CLI, datamodules,
metrics, visualiser and OpenVINO/ONNX export, against our own trainer, maps and commands.

Needs the [anomalib] extra: scripts/test.sh runs this file in ./.venv-anomalib, in a pytest process
of its own. Elsewhere it is skipped with that reason; in that environment
(MINIMAXAD_REQUIRE_ANOMALIB=1) a failing import is an error instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

try:
    import torchvision.ops  # noqa: F401  (a torchvision built for another torch fails here, not at import)
    from anomalib.data import Folder, MVTecAD
    from anomalib.deploy import ExportType, OpenVINOInferencer
    from anomalib.engine import Engine

    from minimaxad.integrations.anomalib import MiniMaxAD
except Exception as exc:  # ImportError, or RuntimeError from a torchvision built for another torch
    if os.environ.get("MINIMAXAD_REQUIRE_ANOMALIB") == "1":
        raise
    pytest.skip(
        f"needs the [anomalib] extra ({type(exc).__name__}: {str(exc)[:100]}); scripts/test.sh runs these "
        f"in ./.venv-anomalib",
        allow_module_level=True,
    )

from minimaxad.cli import main
from minimaxad.engine.checkpoint import CheckpointError, model_from_checkpoint, read_checkpoint
from minimaxad.engine.config import RunConfig
from minimaxad.engine.distributed import current_context
from minimaxad.engine.scoring import infer_batch
from minimaxad.engine.trainer import Batch, TrainingRun, seed_everything
from minimaxad.predict import Predictor

CATEGORY = "washer"
SIZE = 64
MICRO = dict(backbone="unireplknet_micro", encoder_weights="none", image_size=SIZE)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """An MVTec-layout tree (what anomalib's MVTecAD datamodule reads): 8 training photos, 4 normal and
    6 defective test photos with masks, 64 px (the model's size: both sides' resize is the identity)."""
    from minimaxad.data import generate_synthetic_dataset

    return generate_synthetic_dataset(
        tmp_path_factory.mktemp("anomalib") / "data",
        categories=(CATEGORY,),
        n_train=8,
        n_test_good=4,
        n_test_defect=1,
        image_size=SIZE,
        seed=3,
    )


def mvtec_datamodule(root: Path) -> MVTecAD:
    return MVTecAD(root=root, category=CATEGORY, train_batch_size=4, eval_batch_size=4, num_workers=0, seed=0)


def folder_datamodule(root: Path) -> Folder:
    category = root / CATEGORY
    return Folder(
        name=CATEGORY,
        root=category,
        normal_dir="train/good",
        abnormal_dir=[str(p) for p in sorted((category / "test").iterdir()) if p.name != "good"],
        normal_test_dir="test/good",
        mask_dir=[str(p) for p in sorted((category / "ground_truth").iterdir())],
        train_batch_size=4,
        eval_batch_size=4,
        num_workers=0,
        seed=0,
    )


def test_photos(root: Path) -> list[Path]:
    return sorted((root / CATEGORY / "test").rglob("*.png"))


test_photos.__test__ = False  # a helper, not a test


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    """`anomalib train --model ...MiniMaxAD --data anomalib.data.MVTecAD` through the Python Engine:
    2 epochs of 2 steps, validation (our thresholds into anomalib's post-processor), then test."""
    results_dir = tmp_path_factory.mktemp("engine")
    model = MiniMaxAD(**MICRO, thresholds="minimaxad")
    engine = Engine(max_epochs=2, accelerator="cpu", default_root_dir=results_dir)
    datamodule = mvtec_datamodule(data_root)
    engine.fit(model=model, datamodule=datamodule)
    results = engine.test(model=model, datamodule=datamodule)
    checkpoint = Path(engine.trainer.checkpoint_callback.best_model_path)
    return model.eval(), engine, results, checkpoint, results_dir


def our_inputs(checkpoint: Path, paths: list[Path]) -> torch.Tensor:
    """The photos as `minimaxad predict` feeds them to the network."""
    images, _ = Predictor.from_checkpoint(checkpoint, device="cpu").preprocess([str(p) for p in paths])
    return images


def test_engine_fit_and_test_report_anomalib_metrics(trained, data_root):
    model, engine, results, checkpoint, results_dir = trained
    metrics = results[0]
    for name in ("image_AUROC", "image_F1Score", "pixel_AUROC", "pixel_F1Score"):
        assert 0.0 <= metrics[name] <= 1.0, name
    # the paper's schedule: ExponentialLR(0.995) stepped once per epoch, after 2 epochs
    optimizer = engine.trainer.optimizers[0]
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.005 * 0.995**2)
    assert engine.trainer.global_step == 4  # 8 photos, batches of 4, 2 epochs
    # only the bottleneck and decoder train; the encoder stays frozen and in eval mode
    assert not any(p.requires_grad for p in model.network.encoder.parameters())
    # our thresholds, calibrated on the normal validation photos, are the post-processor's
    calibration = model.calibration
    assert "normal validation images" in calibration["image"]["note"]
    assert float(model.post_processor.image_threshold) == pytest.approx(calibration["image"]["value"], rel=1e-6)
    assert float(model.post_processor.pixel_threshold) == pytest.approx(calibration["pixel"]["value"], rel=1e-6)
    # anomalib's visualiser wrote its pictures of the test photos
    assert checkpoint.is_file()
    assert len(list(results_dir.rglob("*.png"))) >= len(test_photos(data_root))


def test_anomaly_maps_are_ours(trained, data_root):
    """The anomaly maps and scores of the trained model equal minimaxad's to 1e-6 for the same input."""
    model, _, _, checkpoint, _ = trained
    paths = test_photos(data_root)
    images = our_inputs(checkpoint, paths)
    ours = model_from_checkpoint(checkpoint).reparameterize()  # as `minimaxad predict` and `test` run it
    our_maps, our_scores = infer_batch(ours, images)
    with torch.no_grad():
        theirs = model.model.eval()(images)
    assert theirs.anomaly_map.shape == (len(paths), 1, SIZE, SIZE)
    torch.testing.assert_close(theirs.anomaly_map[:, 0], our_maps, rtol=0, atol=1e-6)
    torch.testing.assert_close(theirs.pred_score, our_scores, rtol=0, atol=1e-6)
    # anomalib's pre-processing of a photo already at the model's size is ours up to float rounding
    from anomalib.data.utils import read_image

    photo = read_image(paths[0], as_tensor=True)[None]
    torch.testing.assert_close(model.pre_processor.transform(photo), images[:1], rtol=0, atol=1e-5)


class CapturingMiniMaxAD(MiniMaxAD):
    """Keeps the batch of its training step as it saw it (after anomalib's pre-processor) and the loss."""

    def training_step(self, batch, *args, **kwargs):
        output = super().training_step(batch, *args, **kwargs)
        self.captured = batch.image.detach().clone(), float(output["loss"].detach())
        return output


def test_one_step_in_anomalib_equals_one_step_of_our_trainer(data_root, tmp_path):
    seed = 111
    seed_everything(seed)  # as TrainingRun.set_up does before building the network
    model = CapturingMiniMaxAD(**MICRO, loss="adc")
    before = {k: v.clone() for k, v in model.network.state_dict().items()}
    engine = Engine(max_steps=1, limit_val_batches=0, accelerator="cpu", default_root_dir=tmp_path / "anomalib")
    engine.fit(model=model, datamodule=mvtec_datamodule(data_root))
    assert engine.trainer.global_step == 1

    config = RunConfig(**MICRO, batch_size=4, seed=seed, device="cpu", loss="adc")
    run = TrainingRun(config, tmp_path / "ours", [CATEGORY], current_context())
    run.set_up(resume=False)
    initial = run.model.state_dict()
    assert initial.keys() == before.keys()
    for key, value in before.items():  # the same seed builds the same network
        assert torch.equal(initial[key], value), key
    run.network.train()
    images, loss = model.captured
    run.step(Batch(images, global_size=len(images), indices=list(range(len(images))), paths=[]))

    assert run.loss_value == pytest.approx(loss, rel=1e-6)
    theirs = model.network.trainable_state_dict()
    ours = run.model.trainable_state_dict()
    assert theirs.keys() == ours.keys()
    changed = 0
    for key, value in ours.items():
        torch.testing.assert_close(theirs[key], value, msg=key)  # float32 tolerances
        changed += int(not torch.equal(value, before[key]))
    assert changed > 10  # the step did move the bottleneck and decoder


def test_folder_datamodule_engine_fit_then_test(data_root, tmp_path):
    """The check outside the tests, as the issue gives it: Folder, unireplknet_f, random encoder, 64 px."""
    model = MiniMaxAD(backbone="unireplknet_f", encoder_weights="none", image_size=64)
    engine = Engine(max_epochs=1, accelerator="cpu", default_root_dir=tmp_path)
    datamodule = folder_datamodule(data_root)
    engine.fit(model=model, datamodule=datamodule)
    results = engine.test(model=model, datamodule=datamodule)
    assert 0.0 <= results[0]["image_AUROC"] <= 1.0
    checkpoint = read_checkpoint(engine.trainer.checkpoint_callback.best_model_path)
    assert checkpoint["backbone"] == "unireplknet_f" and checkpoint["categories"] == [CATEGORY]


def test_minimaxad_predict_and_export_read_the_anomalib_checkpoint(trained, data_root, tmp_path):
    model, _, _, checkpoint, _ = trained
    # the Lightning file loads with weights_only=True (no code runs), and ours is inside it
    raw = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert "state_dict" in raw and "pytorch-lightning_version" in raw
    state = read_checkpoint(checkpoint)
    assert state["backbone"] == "unireplknet_micro" and state["image_size"] == SIZE
    assert state["trained_with"].startswith("anomalib ")
    assert state["thresholds"]["image"]["value"] == pytest.approx(model.calibration["image"]["value"])

    good = data_root / CATEGORY / "test" / "good"
    out = tmp_path / "predicted"
    assert main(["predict", "--checkpoint", str(checkpoint), str(good), "--output", str(out), "--quiet"]) == 0
    summary = json.loads((out / "scores.json").read_text())
    assert summary["image_threshold"] == pytest.approx(model.calibration["image"]["value"])
    paths = sorted(good.glob("*.png"))
    rows = {row["name"]: row["score"] for row in summary["predictions"]}
    with torch.no_grad():
        theirs = model.model.eval()(our_inputs(checkpoint, paths)).pred_score
    assert [rows[p.stem] for p in paths] == pytest.approx(theirs.tolist(), abs=1e-5)

    onnx = tmp_path / "model.onnx"  # `minimaxad export` with its own parity check against PyTorch
    assert main(["export", "--checkpoint", str(checkpoint), "--output", str(onnx)]) == 0
    assert onnx.is_file()


def unnormalize(values: np.ndarray, post_processor, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """anomalib's normalised values back to raw ones, and where that is possible (not clamped)."""
    low, high = float(getattr(post_processor, f"{kind}_min")), float(getattr(post_processor, f"{kind}_max"))
    threshold = float(getattr(post_processor, f"{kind}_threshold"))
    values = np.asarray(values, dtype=np.float64)
    return (values - 0.5) * (high - low) + threshold, (values > 0) & (values < 1)


@pytest.mark.parametrize("export_type", ["openvino", "onnx"])
def test_exported_model_serves_our_maps(trained, data_root, tmp_path, export_type, monkeypatch):
    """engine.export(..., OPENVINO | ONNX): anomalib's OpenVINOInferencer (or onnxruntime) gives our maps
    and scores (after anomalib's normalisation, undone here), and labels with our threshold."""
    monkeypatch.chdir(tmp_path)  # OpenVINOInferencer writes ./openvino_cache
    model, engine, _, checkpoint, _ = trained
    path = engine.export(model=model, export_type=ExportType(export_type), export_root=tmp_path)
    paths = test_photos(data_root)
    ours = model_from_checkpoint(checkpoint).reparameterize()
    our_maps, our_scores = infer_batch(ours, our_inputs(checkpoint, paths))
    post = model.post_processor
    image_threshold = float(post.image_threshold)
    if export_type == "openvino":
        # f32: on CPUs with bfloat16 units OpenVINO otherwise computes in bf16 (maps off by ~1e-3)
        inferencer = OpenVINOInferencer(path=path, device="CPU", config={"INFERENCE_PRECISION_HINT": "f32"})
        outputs = [inferencer.predict(p) for p in paths]
        maps = np.concatenate([o.anomaly_map.reshape(1, SIZE, SIZE) for o in outputs])
        scores = np.concatenate([np.asarray(o.pred_score).reshape(-1) for o in outputs])
        labels = np.concatenate([np.asarray(o.pred_label).reshape(-1) for o in outputs])
    else:
        import onnxruntime
        from anomalib.data.utils import read_image

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        photos = np.stack([read_image(p, as_tensor=True).numpy() for p in paths]).astype(np.float32)
        names = [o.name for o in session.get_outputs()]
        result = dict(zip(names, session.run(None, {session.get_inputs()[0].name: photos})))
        maps, scores = result["anomaly_map"].reshape(-1, SIZE, SIZE), result["pred_score"].reshape(-1)
        labels = result["pred_label"].reshape(-1)
    raw_maps, inside = unnormalize(maps, post, "pixel")
    assert inside.mean() > 0.2  # enough pixels are not clamped to compare
    np.testing.assert_allclose(raw_maps[inside], our_maps.numpy()[inside], rtol=0, atol=2e-5)
    raw_scores, scored = unnormalize(scores, post, "image")
    np.testing.assert_allclose(raw_scores[scored], our_scores.numpy()[scored], rtol=0, atol=2e-5)
    # labels: a raw score above our calibrated threshold (thresholds="minimaxad")
    assert image_threshold == pytest.approx(model.calibration["image"]["value"], rel=1e-6)
    np.testing.assert_array_equal(labels.astype(bool), our_scores.numpy() > image_threshold)


def test_anomalib_command_line_trains_and_tests(data_root, tmp_path):
    """`anomalib train --model minimaxad.integrations.anomalib.MiniMaxAD --data anomalib.data.MVTecAD`."""
    command = [
        str(Path(sys.executable).parent / "anomalib"),
        "train",
        "--model",
        "minimaxad.integrations.anomalib.MiniMaxAD",
        "--model.backbone",
        "unireplknet_micro",
        "--model.encoder_weights",
        "none",
        "--model.image_size",
        str(SIZE),
        "--data",
        "anomalib.data.MVTecAD",
        "--data.root",
        str(data_root),
        "--data.category",
        CATEGORY,
        "--data.train_batch_size",
        "4",
        "--data.num_workers",
        "0",
        "--trainer.max_epochs",
        "1",
        "--trainer.accelerator",
        "cpu",
        "--default_root_dir",
        str(tmp_path),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "image_AUROC" in done.stdout + done.stderr
    (checkpoint,) = tmp_path.rglob("*.ckpt")
    assert read_checkpoint(checkpoint)["backbone"] == "unireplknet_micro"


def test_bad_settings_and_foreign_checkpoints_are_refused_with_a_reason(tmp_path):
    with pytest.raises(ValueError, match="loss='bogus'"):
        MiniMaxAD(**MICRO, loss="bogus")
    with pytest.raises(ValueError, match="thresholds="):
        MiniMaxAD(**MICRO, thresholds="f1")
    other = tmp_path / "other.ckpt"  # a Lightning checkpoint of some other model
    torch.save({"state_dict": {"w": torch.zeros(1)}, "pytorch-lightning_version": "2.6.6"}, other)
    with pytest.raises(CheckpointError, match="without a minimaxad model"):
        read_checkpoint(other)


def test_a_non_finite_loss_skips_the_step_then_stops_training_as_ours():
    from types import SimpleNamespace

    from minimaxad.engine.trainer import TrainingError

    model = MiniMaxAD(**MICRO).train()
    batch = SimpleNamespace(image=torch.full((2, 3, SIZE, SIZE), float("nan")))
    before = {k: v.clone() for k, v in model.network.state_dict().items()}
    for _ in range(model.config.max_nonfinite_steps - 1):
        with pytest.warns(RuntimeWarning, match="non-finite loss"):
            assert model.training_step(batch, 0) is None  # Lightning skips backward and step
    after = model.network.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # BatchNorm statistics too
    with pytest.raises(TrainingError, match="non-finite for 5 steps in a row"):
        model.training_step(batch, 0)
