"""Loading the authors' ImageNet checkpoints and training checkpoints."""

from __future__ import annotations

import ast
import json
import logging
import os
from pathlib import Path

import pytest
import torch

from minimaxad import MiniMaxAD
from minimaxad.models.weights import EncoderWeightsError, load_official_checkpoint


@pytest.fixture(scope="module")
def imagenet_like(reference_dir):
    """A file shaped like unireplknet_n_in1k_224_acc81.64.pth, with random values."""
    layout = json.loads((reference_dir / "state_dict_keys_unireplknet_n.json").read_text())
    keys = layout["imagenet_checkpoint_unireplknet_n_in1k"]
    g = torch.Generator().manual_seed(0)
    return {
        k: (
            torch.randint(0, 100, shape, generator=g)
            if k.endswith("num_batches_tracked")
            else torch.randn(shape, generator=g)
        )
        for k, shape in keys.items()
    }


def test_imagenet_checkpoint_loads_every_encoder_weight(imagenet_like, tmp_path, caplog):
    path = tmp_path / "unireplknet_n_in1k_224_acc81.64.pth"
    torch.save({"model": imagenet_like}, path)
    with caplog.at_level(logging.DEBUG, logger="minimaxad.models.weights"):
        model = MiniMaxAD("unireplknet_n", encoder_weights=path)
    state = model.encoder.state_dict()
    for key, value in state.items():
        if key.startswith(("norm0.", "norm1.", "norm2.")):
            expected = torch.ones_like(value) if key.endswith("weight") else torch.zeros_like(value)
            assert torch.equal(value, expected), key
        else:
            assert torch.equal(value, imagenet_like[key].to(value.dtype)), key
    assert model.encoder_weights_id.startswith("unireplknet_n_in1k_224_acc81.64.pth@sha256:")
    unused_logs = [r for r in caplog.records if "unused" in r.getMessage()]
    assert len(unused_logs) == 1 and unused_logs[0].levelno == logging.DEBUG
    assert all(not p.requires_grad for p in model.encoder.parameters())


@pytest.mark.parametrize("wrapper", ["raw", "models"])
def test_wrapped_and_raw_checkpoints(imagenet_like, tmp_path, wrapper):
    path = tmp_path / "ck.pth"
    torch.save(imagenet_like if wrapper == "raw" else {"models": imagenet_like}, path)
    model = MiniMaxAD("unireplknet_n", encoder_weights=path)
    assert torch.equal(model.encoder.downsample_layers[0][0].weight, imagenet_like["downsample_layers.0.0.weight"])


def test_missing_key_is_named(imagenet_like, tmp_path):
    broken = dict(imagenet_like)
    del broken["stages.2.7.dwconv.dil_conv_k3_5.weight"]
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(EncoderWeightsError, match=r"1 missing key\(s\): stages\.2\.7\.dwconv\.dil_conv_k3_5\.weight"):
        MiniMaxAD("unireplknet_n", encoder_weights=tmp_path / "broken.pth")


def test_misshaped_key_is_named(imagenet_like, tmp_path):
    broken = dict(imagenet_like)
    broken["stages.1.0.se.down.weight"] = torch.randn(7, 160, 1, 1)
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(EncoderWeightsError, match=r"stages\.1\.0\.se\.down\.weight: file \(7, 160, 1, 1\)"):
        MiniMaxAD("unireplknet_n", encoder_weights=tmp_path / "broken.pth")


def test_wrong_variant_fails_clearly(imagenet_like, tmp_path):
    torch.save(imagenet_like, tmp_path / "n.pth")
    with pytest.raises(EncoderWeightsError, match="do not fit backbone unireplknet_f"):
        MiniMaxAD("unireplknet_f", encoder_weights=tmp_path / "n.pth")


def test_missing_file_says_what_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIMAXAD_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(EncoderWeightsError) as info:
        MiniMaxAD("unireplknet_n", encoder_weights=tmp_path / "nope.pth")
    message = str(info.value)
    assert "unireplknet_n_in1k_224_acc81.64.pth" in message
    assert "huggingface.co/DingXiaoH/UniRepLKNet" in message and "--encoder-weights" in message


def test_hub_without_huggingface_hub_still_downloads(tmp_path, monkeypatch):
    """huggingface_hub is optional (only its cache is looked in): the download is plain HTTP."""
    import builtins

    real_import = builtins.__import__

    def no_hub(name, *args, **kwargs):
        if name.startswith("huggingface_hub"):
            raise ImportError("no huggingface_hub here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setenv("MINIMAXAD_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("MINIMAXAD_HUB_URL", "http://127.0.0.1:9")  # nothing listens: fails at once
    monkeypatch.setattr(builtins, "__import__", no_hub)
    with pytest.raises(EncoderWeightsError, match="download failed.*127.0.0.1:9.*unireplknet_f_in1k_224_acc78.58.pth"):
        MiniMaxAD("unireplknet_f", encoder_weights="hub")


def test_hub_uses_local_cache_first(imagenet_like, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIMAXAD_WEIGHTS_DIR", str(tmp_path))
    torch.save(imagenet_like, tmp_path / "unireplknet_n_in1k_224_acc81.64.pth")
    model = MiniMaxAD("unireplknet_n", encoder_weights="hub")
    assert model.encoder_weights_id.startswith("unireplknet_n_in1k_224_acc81.64.pth")


def test_authors_training_checkpoint_imports(tmp_path):
    source = MiniMaxAD("unireplknet_micro")
    torch.save({"bn": source.bottleneck.state_dict(), "decoder": source.decoder.state_dict()}, tmp_path / "wres.pth")
    target = MiniMaxAD("unireplknet_micro")
    load_official_checkpoint(target, tmp_path / "wres.pth")
    for k, v in source.trainable_state_dict().items():
        assert torch.equal(target.trainable_state_dict()[k], v)
    torch.save({"something": 1}, tmp_path / "other.pth")
    with pytest.raises(RuntimeError, match="expected keys 'bn' and 'decoder'"):
        load_official_checkpoint(target, tmp_path / "other.pth")


def test_official_state_dict_mismatch_fails():
    model = MiniMaxAD("unireplknet_micro")
    other = MiniMaxAD("unireplknet_f")
    with pytest.raises(RuntimeError, match="decoder state dict does not fit backbone unireplknet_micro"):
        model.load_official_state_dict(decoder=other.decoder.state_dict())


# -- the hub file names, against the authors' table ------------------------------------------------
def _authors_hub_file_names() -> dict[str, str]:
    """``huggingface_file_names`` of the authors' models/unireplknet.py, read as text (never
    imported): key (``unireplknet_f_1k``...) -> file name on the hub."""
    from ..conftest import AUTHORS_CODE_ENV, DEFAULT_AUTHORS_CODE, authors_code_dir

    code = authors_code_dir()
    if code is None:
        looked = Path(os.environ.get(AUTHORS_CODE_ENV, DEFAULT_AUTHORS_CODE)) / "models" / "unireplknet.py"
        pytest.skip(f"the authors' code is not here: no {looked} (set {AUTHORS_CODE_ENV} to a checkout of it)")
    source = code / "models" / "unireplknet.py"
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"), filename=str(source))):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "huggingface_file_names" for t in node.targets
        ):
            table = ast.literal_eval(node.value)
            assert isinstance(table, dict) and table, f"huggingface_file_names in {source} is not a filled dict"
            return table
    raise AssertionError(f"no huggingface_file_names table in {source}: has the authors' code changed?")


def test_every_imagenet_file_name_is_the_authors_hub_name():
    from minimaxad.models.registry import BACKBONES

    table = _authors_hub_file_names()
    checked = {}
    for name, spec in BACKBONES.items():
        key = f"{name}_1k"  # unireplknet_f -> unireplknet_f_1k: the ImageNet-1k file
        if spec.imagenet_file is None:
            assert key not in table, f"{name} has no ImageNet file here, the authors publish {table[key]}"
            continue
        checked[name] = (spec.imagenet_file, table.get(key))
    assert {n: ours for n, (ours, _) in checked.items()} == {n: theirs for n, (_, theirs) in checked.items()}
    assert checked["unireplknet_f"][0] == "unireplknet_f_in1k_224_acc78.58.pth"
    assert len(checked) == 5  # a, f, p, n, t


def test_file_checks_are_keyed_by_the_registry_file_names():
    from minimaxad.models.registry import BACKBONES
    from minimaxad.models.weights import IMAGENET_FILE_CHECKS

    names = {spec.imagenet_file for spec in BACKBONES.values() if spec.imagenet_file}
    assert set(IMAGENET_FILE_CHECKS) <= names, f"checks for files no backbone uses: {set(IMAGENET_FILE_CHECKS) - names}"
    assert "unireplknet_f_in1k_224_acc78.6.pth" not in IMAGENET_FILE_CHECKS


# -- an explicit --encoder-weights PATH is that file or an error, never a download ------------------
@pytest.fixture
def no_download(monkeypatch):
    """Any hub download fails the test (and says so)."""
    from minimaxad.models import weights

    def refuse(spec, **kwargs):
        raise AssertionError(f"a hub download of {spec.imagenet_file} was attempted")

    monkeypatch.setattr(weights, "download_weights", refuse)


@pytest.mark.parametrize("relative", [False, True])
def test_a_missing_encoder_weights_path_is_named_not_downloaded(tmp_path, monkeypatch, no_download, relative):
    from minimaxad.models.weights import EncoderWeightsNotFoundError

    monkeypatch.chdir(tmp_path)
    missing = "weights/nope.pth" if relative else str(tmp_path / "weights" / "nope.pth")
    with pytest.raises(FileNotFoundError) as caught:
        MiniMaxAD("unireplknet_n", encoder_weights=missing)
    message = str(caught.value)
    assert isinstance(caught.value, EncoderWeightsNotFoundError) and isinstance(caught.value, EncoderWeightsError)
    assert message.startswith(f"--encoder-weights {missing!r}: {Path(missing)} does not exist")
    assert ("relative to the current folder" in message) == relative
    assert "Pass an existing file" in message and "'hub'" in message and "'none'" in message
    assert "unireplknet_n_in1k_224_acc81.64.pth" in message  # which file to fetch


def test_a_folder_as_encoder_weights_is_refused(tmp_path, no_download):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} is a folder, not a file. Pass an existing file"):
        MiniMaxAD("unireplknet_n", encoder_weights=tmp_path)


def test_none_as_a_weights_file_says_it_means_a_random_encoder(no_download):
    from minimaxad.models import get_backbone_spec
    from minimaxad.models.weights import resolve_weights_source

    with pytest.raises(EncoderWeightsError, match="'none' means a random encoder") as caught:
        resolve_weights_source(get_backbone_spec("unireplknet_micro"), "none")
    assert not isinstance(caught.value, FileNotFoundError)


def test_hub_and_default_still_reach_the_hub(monkeypatch, tmp_path):
    """'hub' (any case) and its aliases still mean the cache / a download; None still means random."""
    from minimaxad.models import get_backbone_spec, weights

    asked = []
    monkeypatch.setattr(weights, "download_weights", lambda spec, **kw: asked.append(spec.name) or tmp_path / "w.pth")
    for source in ("hub", "HUB", "imagenet", "auto"):
        assert weights.resolve_weights_source(get_backbone_spec("unireplknet_f"), source) == tmp_path / "w.pth"
    assert asked == ["unireplknet_f"] * 4
    assert MiniMaxAD("unireplknet_micro", encoder_weights=None).encoder_weights_id is None


def test_fit_with_a_missing_encoder_weights_path_fails_before_any_download(
    synthetic_root, tmp_path, capsys, no_download
):
    from minimaxad.cli import main

    missing = tmp_path / "nope.pth"
    args = ["fit", "--data", str(synthetic_root), "--output", str(tmp_path / "run"), "--backbone", "unireplknet_f"]
    assert main([*args, "--encoder-weights", str(missing), "--max-steps", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"--encoder-weights '{missing}': {missing} does not exist. Pass an existing file" in err


def test_an_explicit_missing_path_for_a_checkpoint_is_not_replaced_by_the_hub(tmp_path, no_download):
    from minimaxad.engine.checkpoint import model_from_checkpoint

    checkpoint = {
        "backbone": "unireplknet_micro",
        "encoder_state": None,  # trained on an ImageNet file: the encoder comes from a file
        "encoder_weights": {"source": str(tmp_path / "moved.pth"), "identity": "x.pth@sha256:0"},
        "state": MiniMaxAD("unireplknet_micro").trainable_state_dict(),
    }
    with pytest.raises(FileNotFoundError, match="nope.pth does not exist"):
        model_from_checkpoint(checkpoint, encoder_weights=tmp_path / "nope.pth")
