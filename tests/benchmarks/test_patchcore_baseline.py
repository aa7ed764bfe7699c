"""The PatchCore-style memory-bank baseline used by the cost benchmark."""

from __future__ import annotations

import torch
from patchcore_baseline import MemoryBankDetector, greedy_coreset, nearest_distances, patch_features

from minimaxad.models import MiniMaxAD


def brute_force_coreset(points: torch.Tensor, count: int, first: int) -> list[int]:
    chosen = [first]
    for _ in range(count - 1):
        d = torch.cdist(points.double(), points[chosen].double()).amin(dim=1)
        chosen.append(int(d.argmax()))
    return chosen


def test_greedy_coreset_is_farthest_point_selection():
    g = torch.Generator().manual_seed(0)
    points = torch.randn(300, 16, generator=g)  # below the projection width: exact distances
    chosen = greedy_coreset(points, 12, seed=4)
    assert chosen.tolist() == brute_force_coreset(points, 12, int(chosen[0]))
    far = torch.cat([torch.zeros(200, 2), torch.tensor([[50.0, 0.0], [0.0, -60.0]])])
    picked = set(greedy_coreset(far + 0.01 * torch.randn(202, 2, generator=g), 3, seed=1).tolist())
    assert {200, 201} <= picked  # both outliers are taken before any second point of the cluster


def test_nearest_distances_are_exact_in_chunks():
    g = torch.Generator().manual_seed(1)
    queries, bank = torch.randn(50, 24, generator=g), torch.randn(1000, 24, generator=g)
    expected = torch.cdist(queries.double(), bank.double()).amin(dim=1)
    got = nearest_distances(queries, bank, chunk=128)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_memory_bank_detector_scores_a_training_image_zero():
    torch.manual_seed(0)
    encoder = MiniMaxAD("unireplknet_micro").encoder.eval()
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    train = patch_features(encoder, images[:2])  # (2, 64, D): 8x8 patches at 1/8 of 64 px
    assert train.shape[:2] == (2, 64)
    detector = MemoryBankDetector(encoder, coreset_ratio=1.0).fit(train.flatten(0, 1), method="random")
    maps, scores = detector.score(images)
    assert maps.shape == (3, 64, 64) and scores.shape == (3,)
    assert scores[:2].max() < 1e-2 * scores[2]  # its own patches are in the bank; the new image's are not
    small = MemoryBankDetector(encoder, coreset_ratio=0.1).fit(train.flatten(0, 1), method="greedy")
    assert small.bank.shape[0] == round(0.1 * 128)
