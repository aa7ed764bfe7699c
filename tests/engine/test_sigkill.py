"""SIGKILL at 20 seeded points of a short fit (reading images, the forward pass, the weight
update, in the middle of a checkpoint write, right after its rename, during calibration): no
checkpoint is ever found half-written, and every resumed run ends with the weights, optimiser
state and thresholds of a run that was never interrupted.

Repeat: ``python3 -m pytest -q -s tests/engine/test_sigkill.py`` (prints the table of docs/reliability.md,
"Fault injection"; ``MINIMAXAD_KILL_SEED`` picks other points).
"""

from __future__ import annotations

import json
import os
import random
import signal

import pytest
import torch

from minimaxad.engine.checkpoint import read_checkpoint

from .kill_points import run_fit

# kill points per site (20 in all); the call at which each one strikes is drawn with the seed
QUOTA = {"load": 5, "forward": 4, "update": 5, "write": 3, "rename": 3}
SEED = int(os.environ.get("MINIMAXAD_KILL_SEED", "14"))


def fit_argv(root, out, *extra):
    return [
        "fit",
        "--data",
        str(root),
        "--categories",
        "weave",
        "--backbone",
        "unireplknet_micro",
        "--encoder-weights",
        "none",
        "--image-size",
        "32",
        "--batch-size",
        "4",
        "--epochs",
        "2",
        "--val-fraction",
        "0",
        "--no-eval",
        "--checkpoint-every",
        "1",
        "--quiet",
        "--output",
        str(out),
        *extra,
    ]


def kill_points(counts: dict[str, int], seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    points = []
    for site, quota in QUOTA.items():
        calls = range(1, counts[site] + 1)
        points += [(site, n) for n in sorted(rng.sample(calls, min(quota, len(calls))))]
    return points


def same_run(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_sigkill_at_20_points_then_resume(synthetic_root, tmp_path):
    counts_file = tmp_path / "counts.json"
    assert run_fit(fit_argv(synthetic_root, tmp_path / "reference"), counts_file=counts_file) == 0
    counts = json.loads(counts_file.read_text())
    assert counts["update"] == 6 and counts["write"] == 3  # 2 epochs x 3 steps; last.pt twice, checkpoint.pt
    reference = read_checkpoint(tmp_path / "reference" / "weave" / "checkpoint.pt")
    reference_last = read_checkpoint(tmp_path / "reference" / "weave" / "last.pt")["training_state"]
    points = kill_points(counts, SEED)
    assert len(points) == 20
    outcomes = []
    for i, (site, n) in enumerate(points):
        out = tmp_path / f"killed-{i:02d}-{site}-{n}"
        assert run_fit(fit_argv(synthetic_root, out), kill_at=(site, n)) == -signal.SIGKILL, (site, n)
        checkpoints = sorted((out / "weave").glob("*.pt")) if (out / "weave").is_dir() else []
        for path in checkpoints:  # whatever exists is complete
            read_checkpoint(path)
        assert run_fit(fit_argv(synthetic_root, out, "--resume")) == 0, (site, n)
        resumed = read_checkpoint(out / "weave" / "checkpoint.pt")
        last = read_checkpoint(out / "weave" / "last.pt")["training_state"]
        identical = (
            same_run(resumed["state"], reference["state"])
            and resumed["thresholds"]["image"]["value"] == reference["thresholds"]["image"]["value"]
            and last["scheduler"] == reference_last["scheduler"]
            and all(
                same_run(x, y)
                for x, y in zip(last["optimizer"]["state"].values(), reference_last["optimizer"]["state"].values())
            )
        )
        outcomes.append(
            {
                "site": site,
                "call": n,
                "checkpoints_left": [p.name for p in checkpoints],
                "identical": identical,
                "temporary_files_left": len(list(out.rglob(".*.tmp"))),
            }
        )
    print("\nSIGKILL suite (seed %d):" % SEED)
    for site in QUOTA:
        mine = [o for o in outcomes if o["site"] == site]
        print(f"  {site:<8} killed {len(mine)} times, resumed bit-identical {sum(o['identical'] for o in mine)}")
    assert all(o["identical"] for o in outcomes), [o for o in outcomes if not o["identical"]]
    assert all(o["temporary_files_left"] == 0 for o in outcomes)  # the resumed run cleaned up
