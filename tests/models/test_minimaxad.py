"""The MiniMaxAD module: variants, shapes, frozen encoder, state-dict layout, fusion."""

from __future__ import annotations

import json

import pytest
import torch

from minimaxad import MiniMaxAD, list_backbones
from minimaxad.models.weights import encoder_from_official, encoder_to_official

from .test_blocks import randomize, rel_err


def test_registry_lists_paper_variants():
    for name in ("unireplknet_a", "unireplknet_f", "unireplknet_p", "unireplknet_n", "unireplknet_t"):
        assert name in list_backbones()
    assert MiniMaxAD().backbone == "unireplknet_n"
    with pytest.raises(ValueError, match="unknown backbone 'resnet18'"):
        MiniMaxAD("resnet18")


@pytest.mark.parametrize("size", [64, 96])
def test_forward_shapes(size):
    model = MiniMaxAD("unireplknet_micro").eval()
    enc, dec = model(torch.randn(2, 3, size, size))
    assert [tuple(e.shape) for e in enc] == [
        (2, 16, size // 4, size // 4),
        (2, 32, size // 8, size // 8),
        (2, 64, size // 16, size // 16),
    ]
    assert [e.shape for e in enc] == [d.shape for d in dec]


def test_size_not_multiple_of_32_resizes_decoder_maps():
    model = MiniMaxAD("unireplknet_micro").eval()
    enc, dec = model(torch.randn(1, 3, 80, 80))  # bottleneck 3x3 -> decoder 24/12/6 vs 20/10/5
    assert [e.shape for e in enc] == [d.shape for d in dec]


def test_encoder_frozen_and_stays_in_eval():
    model = MiniMaxAD("unireplknet_micro")
    model.train()
    assert not model.encoder.training and model.decoder.training and model.bottleneck.training
    assert all(not p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.trainable_parameters())
    enc, dec = model(torch.randn(2, 3, 64, 64))
    assert not any(e.requires_grad for e in enc) and all(d.requires_grad for d in dec)
    sum(d.mean() for d in dec).backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    running = model.encoder.stages[0][0].norm.running_mean.clone()
    model(torch.randn(2, 3, 64, 64) * 5)
    torch.testing.assert_close(model.encoder.stages[0][0].norm.running_mean, running)


def test_reparameterize_whole_model_micro():
    model = randomize(MiniMaxAD("unireplknet_micro"), seed=5)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        enc0, dec0 = model(x)
        assert model.reparameterize() is model and model.reparameterize() is model
        enc1, dec1 = model(x)
    for a, b in zip(enc1 + dec1, enc0 + dec0):
        assert rel_err(a, b) < 1e-5
    assert model.reparameterized


@pytest.fixture(scope="module")
def layout(reference_dir):
    return json.loads((reference_dir / "state_dict_keys_unireplknet_n.json").read_text())


@pytest.fixture(scope="module")
def model_n():
    return MiniMaxAD("unireplknet_n")


def shapes(state):
    return {k: list(v.shape) for k, v in state.items()}


def test_variant_n_matches_authors_key_layout(model_n, layout):
    assert shapes(model_n.bottleneck.state_dict()) == layout["bottleneck"]
    assert shapes(model_n.decoder.state_dict()) == layout["decoder"]
    # the encoder omits the unused downsample_layers.3 / norm3; the converter maps both ways
    ours = model_n.encoder.state_dict()
    official = encoder_to_official(ours, model_n.spec)
    assert shapes(official) == layout["encoder"]
    back, unused = encoder_from_official(official)
    assert shapes(back) == shapes(ours)
    assert sorted(unused) == sorted(k for k in layout["encoder"] if k.startswith(("downsample_layers.3", "norm3")))
    for k in ours:
        assert torch.equal(back[k], ours[k])


def test_trainable_parameter_count_of_n():
    # bottleneck + decoder of variant N: about 23 M parameters (~90 MB float32), SPEC
    model = MiniMaxAD("unireplknet_n")
    n = sum(p.numel() for p in model.trainable_parameters())
    assert 20e6 < n < 26e6, n


@pytest.mark.parametrize(
    "backbone", ["unireplknet_a", "unireplknet_f", "unireplknet_p", "unireplknet_n", "unireplknet_t"]
)
def test_reparameterize_is_exact_for_every_variant(backbone):
    """In float64 the fused model equals the training form to rounding (randomised weights and
    statistics; in float32 deep randomised variants are ill-conditioned, the fusion is not)."""
    model = randomize(MiniMaxAD(backbone), seed=11).double()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        enc0, dec0 = model(x)
        model.reparameterize()
        enc1, dec1 = model(x)
    for a, b in zip(enc1 + dec1, enc0 + dec0):
        assert rel_err(a, b) < 1e-10


def test_training_encodes_with_a_fused_copy_that_follows_the_encoder():
    torch.manual_seed(0)
    model = MiniMaxAD("unireplknet_micro").train()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        plain = model.encoder(images)
    fused = model.encode(images)
    copy_used = model._frozen_encoder()
    assert copy_used is not model.encoder and copy_used is model._frozen_encoder()  # built once
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert not any(k.startswith("_fused") for k in model.state_dict())

    # new encoder weights through the model: the copy is rebuilt and follows them
    other = MiniMaxAD("unireplknet_micro")
    with torch.no_grad():
        for p in other.encoder.parameters():
            p.mul_(1.5)
    model.load_state_dict(other.state_dict())
    with torch.no_grad():
        expected = other.encoder(images)
    for a, b in zip(model.encode(images), expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)

    model.encode(images)
    model.encoder.load_state_dict(MiniMaxAD("unireplknet_micro").encoder.state_dict())  # a direct load
    with torch.no_grad():
        expected = model.encoder(images)
    for a, b in zip(model.encode(images), expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)

    model.double()  # dtype (and device) changes drop the copy too
    assert model.encode(images.double())[0].dtype == torch.float64

    model.eval()  # not training: the encoder itself
    assert model._frozen_encoder() is model.encoder


def test_fused_training_copy_is_not_pickled_or_deep_copied():
    import copy
    import io

    model = MiniMaxAD("unireplknet_micro").train()
    images = torch.randn(1, 3, 64, 64)
    expected = model.encode(images)
    assert "_fused_encoder" in model.__dict__
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=False)  # our own object, written just above
    for clone in (restored, copy.deepcopy(model)):
        assert "_fused_encoder" not in clone.__dict__
        torch.testing.assert_close(clone.encode(images)[0], expected[0])
