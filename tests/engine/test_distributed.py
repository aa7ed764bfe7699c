"""Distributed training (torchrun + DDP, gloo on CPU) equals one process with the same global batch.

* the sampler: one data order for every world size, every image once per epoch;
* the distributed losses and SyncBatchNorm2d in two real gloo processes (torch.multiprocessing):
  the global forms give the one-process value and gradient, the per-rank ADC does not;
* ``python -m torch.distributed.run --nproc-per-node 2 -m minimaxad fit``: weights equal a
  one-process run, every image seen once per epoch, only rank 0 wrote files, and a SIGKILLed
  run resumes with ``--resume`` to the same weights.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from minimaxad.cli import main
from minimaxad.engine.checkpoint import read_checkpoint
from minimaxad.engine.distributed import (
    EpochBatchSampler,
    SyncBatchNorm2d,
    convert_sync_batchnorm,
    distributed_loss,
    revert_sync_batchnorm,
    shard_bounds,
)
from minimaxad.losses import compute_loss
from minimaxad.models import MiniMaxAD

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="this PyTorch build has no torch.distributed with gloo",
)

REPO_ROOT = Path(__file__).resolve().parents[2]
# 12 weave images, global batch 11: every epoch is a batch of 11 (6 + 5 images on two ranks) and
# a batch of 1 (rank 1 holds none): unequal shares and an empty rank in every epoch
RUN = [
    "--categories",
    "weave",
    "--unified",
    "--backbone",
    "unireplknet_micro",
    "--encoder-weights",
    "none",
    "--image-size",
    "64",
    "--batch-size",
    "11",
    "--val-fraction",
    "0",
    "--seed",
    "7",
    "--quiet",
]
EPOCHS = 6


# -- sampler ------------------------------------------------------------------------------------
def test_shard_bounds_are_contiguous_and_cover_the_batch():
    assert [shard_bounds(11, r, 2) for r in range(2)] == [(0, 6), (6, 11)]
    assert [shard_bounds(1, r, 2) for r in range(2)] == [(0, 1), (1, 1)]  # rank 1 holds none
    assert [shard_bounds(10, r, 4) for r in range(4)] == [(0, 3), (3, 6), (6, 8), (8, 10)]


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_sampler_covers_every_item_once_in_the_same_global_batches(world_size):
    one = EpochBatchSampler(23, 8, seed=5, epoch=2)
    ranks = [list(EpochBatchSampler(23, 8, seed=5, epoch=2, rank=r, world_size=world_size)) for r in range(world_size)]
    assert all(len(batches) == len(one) == 3 for batches in ranks)
    # the ranks' slices, joined in rank order, are the one-process batches
    joined = [sum((ranks[r][step] for r in range(world_size)), []) for step in range(3)]
    assert joined == list(one) == one.global_batches()
    assert [len(b) for b in joined] == [8, 8, 7]
    assert sorted(sum(joined, [])) == list(range(23))
    # the order is torch.randperm seeded by (seed, epoch) and nothing else
    expected = torch.randperm(23, generator=torch.Generator().manual_seed(5 * 100_003 + 2)).tolist()
    assert sum(joined, []) == expected


def test_sampler_order_changes_with_epoch_and_seed_only():
    base = EpochBatchSampler(30, 4, seed=1, epoch=0).permutation()
    assert EpochBatchSampler(30, 4, seed=1, epoch=0, rank=1, world_size=2).permutation() == base
    assert EpochBatchSampler(30, 4, seed=1, epoch=1).permutation() != base
    assert EpochBatchSampler(30, 4, seed=2, epoch=0).permutation() != base


def test_sampler_gives_an_empty_slice_when_the_last_batch_is_smaller_than_the_world():
    batches = [list(EpochBatchSampler(9, 4, seed=0, epoch=0, rank=r, world_size=3)) for r in range(3)]
    assert [len(b[-1]) for b in batches] == [1, 0, 0]  # the last global batch holds 1 image


def test_global_batch_smaller_than_the_world_is_a_clear_error():
    with pytest.raises(ValueError, match="--batch-size 2 is the GLOBAL batch .* at least the number of processes"):
        EpochBatchSampler(10, 2, seed=0, epoch=0, rank=0, world_size=4)


def test_sync_batchnorm_conversion_round_trips_to_plain_batchnorm():
    model = MiniMaxAD("unireplknet_micro")
    before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    convert_sync_batchnorm(model, torch.device("cpu"))
    converted = [m for m in model.decoder.modules() if isinstance(m, SyncBatchNorm2d)]
    assert len(converted) > 10
    assert not any(isinstance(m, SyncBatchNorm2d) for m in model.encoder.modules())  # frozen: untouched
    revert_sync_batchnorm(model)
    assert not any(isinstance(m, SyncBatchNorm2d) for m in model.modules())
    after = model.trainable_state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


# -- losses and BatchNorm in two gloo processes --------------------------------------------------
SHAPES = [(16, 16, 16), (32, 8, 8), (64, 4, 4)]  # unireplknet_micro's maps of a 64-px image
LOSS_CASES = [("adc", "global"), ("adc", "per-rank"), ("global", "global"), ("local", "global"), ("local-hm", "global")]
GLOBAL_BATCHES = (5, 1)  # split 3 + 2, and 1 + 0 (an empty rank)


def make_features(batch: int, seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    encoder = [torch.randn(batch, *shape, generator=generator) for shape in SHAPES]
    decoder = [e + 0.7 * torch.randn(e.shape, generator=generator) for e in encoder]
    return encoder, decoder


def make_bn_input(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(11)
    return (3 * torch.randn(batch, 4, 6, 6, generator=generator) + 1, torch.randn(batch, 4, 6, 6, generator=generator))


def _two_process_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        results: dict = {}
        for batch in GLOBAL_BATCHES:
            start, stop = shard_bounds(batch, rank, world_size)
            encoder, decoder = make_features(batch, seed=batch)
            for name, mode in LOSS_CASES:
                if mode == "per-rank" and stop == start:
                    continue
                local = [d[start:stop].clone().requires_grad_(True) for d in decoder]
                share = distributed_loss(
                    name, [e[start:stop] for e in encoder], local, 64, global_batch=batch, adc_mode=mode
                )
                share.backward()
                results[(batch, name, mode)] = (share.item(), [d.grad for d in local])
            # the ADC pixel limit of a nominal batch of 8 (the authors' num_lim), exact form
            local = [d[start:stop].clone().requires_grad_(True) for d in decoder]
            share = distributed_loss(
                "adc",
                [e[start:stop] for e in encoder],
                local,
                64,
                global_batch=batch,
                adc_mode="global",
                limit_batch_size=8,
            )
            share.backward()
            results[(batch, "adc", "global-nominal-8")] = (share.item(), [d.grad for d in local])
            x, weights = make_bn_input(batch)
            bn = SyncBatchNorm2d(4)
            with torch.no_grad():
                bn.weight.copy_(torch.linspace(0.5, 2, 4))
                bn.bias.copy_(torch.linspace(-1, 1, 4))
            local_x = x[start:stop].clone().requires_grad_(True)
            out = bn(local_x)
            (out * weights[start:stop]).sum().backward()
            grads = torch.cat([bn.weight.grad, bn.bias.grad])
            dist.all_reduce(grads)  # what DDP's gradient all-reduce sums (before its 1/N)
            results[(batch, "bn")] = (
                out.detach(),
                local_x.grad,
                grads,
                bn.running_mean.clone(),
                bn.running_var.clone(),
            )
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("gloo")
    mp.spawn(_two_process_worker, args=(2, str(folder / "store"), str(folder)), nprocs=2, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("batch", GLOBAL_BATCHES)
@pytest.mark.parametrize("name", ["adc", "global", "local", "local-hm"])
def test_global_distributed_loss_equals_the_one_process_loss(two_process_results, name, batch):
    encoder, decoder = make_features(batch, seed=batch)
    decoder = [d.clone().requires_grad_(True) for d in decoder]
    expected = compute_loss(name, encoder, decoder, 64)
    expected.backward()
    shares = [two_process_results[r][(batch, name, "global")] for r in range(2)]
    # the loss of the global batch is the mean of the shares ...
    assert (shares[0][0] + shares[1][0]) / 2 == pytest.approx(expected.item(), rel=1e-5)
    # ... and DDP's averaged gradient (1/N of each rank's) is the one-process gradient
    for level in range(3):
        joined = torch.cat([shares[r][1][level] / 2 for r in range(2)])
        torch.testing.assert_close(joined, decoder[level].grad, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("batch", GLOBAL_BATCHES)
def test_global_adc_with_the_nominal_limit_equals_the_one_process_loss(two_process_results, batch):
    """With a nominal batch of 8 the global batch of 5 takes the 'lim' branch ('hard' with its own limit)."""
    encoder, decoder = make_features(batch, seed=batch)
    decoder = [d.clone().requires_grad_(True) for d in decoder]
    expected = compute_loss("adc", encoder, decoder, 64, limit_batch_size=8)
    expected.backward()
    shares = [two_process_results[r][(batch, "adc", "global-nominal-8")] for r in range(2)]
    assert (shares[0][0] + shares[1][0]) / 2 == pytest.approx(expected.item(), rel=1e-5)
    for level in range(3):
        joined = torch.cat([shares[r][1][level] / 2 for r in range(2)])
        torch.testing.assert_close(joined, decoder[level].grad, rtol=1e-5, atol=1e-9)


def test_per_rank_adc_differs_from_the_one_process_loss(two_process_results):
    encoder, decoder = make_features(5, seed=5)
    decoder = [d.clone().requires_grad_(True) for d in decoder]
    expected = compute_loss("adc", encoder, decoder, 64)
    expected.backward()
    shares = [two_process_results[r][(5, "adc", "per-rank")] for r in range(2)]
    # each rank's thresholds come from its own 3 or 2 images: a different selection of pixels
    joined = torch.cat([shares[r][1][0] / 2 for r in range(2)])
    assert not torch.allclose(joined, decoder[0].grad, rtol=1e-3, atol=1e-9)
    assert (shares[0][0] + shares[1][0]) / 2 != pytest.approx(expected.item(), rel=1e-4)


@pytest.mark.parametrize("batch", GLOBAL_BATCHES)
def test_sync_batchnorm_on_gloo_equals_batchnorm_on_the_global_batch(two_process_results, batch):
    x, weights = make_bn_input(batch)
    x.requires_grad_(True)
    bn = torch.nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 2, 4))
        bn.bias.copy_(torch.linspace(-1, 1, 4))
    out = bn(x)
    (out * weights).sum().backward()
    parts = [two_process_results[r][(batch, "bn")] for r in range(2)]
    torch.testing.assert_close(torch.cat([p[0] for p in parts]), out.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([p[1] for p in parts]), x.grad, rtol=1e-5, atol=1e-5)
    for rank in range(2):  # every rank: global weight/bias gradients and running statistics
        torch.testing.assert_close(parts[rank][2], torch.cat([bn.weight.grad, bn.bias.grad]), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(parts[rank][3], bn.running_mean, rtol=1e-5, atol=1e-6)
        if batch > 1:  # one pixel-sample per channel: torch's unbiased variance is inf/nan there
            torch.testing.assert_close(parts[rank][4], bn.running_var, rtol=1e-5, atol=1e-6)


# -- torchrun, end to end -------------------------------------------------------------------------
AUDIT_HOOK = """
import os, sys
_watch, _log = os.environ.get("AUDIT_WATCH"), os.environ.get("AUDIT_LOG_DIR")
if _watch and _log and "RANK" in os.environ:
    _record = os.path.join(_log, "writes-rank" + os.environ["RANK"] + ".txt")
    open(_record, "a").close()  # proves the hook runs in this rank
    _WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def _hook(event, args):
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & _WRITE)
        elif event in ("os.rename", "os.mkdir", "os.remove"):
            path, writing = args[1] if event == "os.rename" else args[0], True  # rename: (src, dst, ...)
        else:
            return
        if writing and isinstance(path, (str, bytes, os.PathLike)) and os.fsdecode(path).startswith(_watch):
            with open(_record, "a") as handle:
                handle.write(event + " " + os.fsdecode(path) + "\\n")

    sys.addaudithook(_hook)
"""


def torchrun(args: list[str], env_extra: dict[str, str], **popen) -> subprocess.Popen:
    """``python -m torch.distributed.run --standalone --nproc-per-node 2 -m minimaxad fit ...``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **env_extra)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (env_extra.get("PYTHONPATH"), str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH")) if p
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "minimaxad",
        "fit",
        *args,
    ]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def kill_torchrun(pid: int) -> None:
    """SIGKILL torchrun's process group and its workers' (torchrun starts each in its own session)."""
    workers = [int(stat.parent.name) for stat in Path("/proc").glob("[0-9]*/stat") if _parent_pid(stat) == pid]
    os.killpg(pid, signal.SIGKILL)
    for worker in workers:
        try:
            os.killpg(worker, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for worker in workers:  # wait until they are gone (they are not our children)
        while Path(f"/proc/{worker}").exists() and "Z" not in _state(worker):
            time.sleep(0.01)


def _parent_pid(stat: Path) -> int | None:
    try:
        return int(stat.read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def finish(process: subprocess.Popen, timeout: float = 120) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output


def state_of(run: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(run / "checkpoint.pt")["state"]


def read_trace(folder: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(folder.glob("rank*.jsonl")) for line in path.read_text().splitlines()]


# A BatchNorm in training mode removes any per-channel constant added before it, so the loss does
# not depend on these: GRN's beta (then Linear + BatchNorm) and the biases of the depthwise
# branches' BatchNorms (then the block's BatchNorm). Their exact gradient is zero; what they get
# is rounding noise, which AdamW (update ~ lr * g / (|g| + eps)) turns into steps of up to lr in
# ANY two runs whose sums are ordered differently. So are the running means right after them.
GAUGE = ("act.1.beta", "_bn.bias", "norm.running_mean", "pwconv2.2.running_mean", "_bn.running_mean")


@pytest.fixture(scope="module")
def one_process_run(synthetic_root, tmp_path_factory) -> SimpleNamespace:
    folder = tmp_path_factory.mktemp("single")
    os.environ["MINIMAXAD_TRACE_BATCHES"] = str(folder / "trace")
    try:
        assert (
            main(
                [
                    "fit",
                    "--data",
                    str(synthetic_root),
                    "--output",
                    str(folder / "run"),
                    *RUN,
                    "--epochs",
                    str(EPOCHS),
                    "--no-eval",
                ]
            )
            == 0
        )
    finally:
        del os.environ["MINIMAXAD_TRACE_BATCHES"]
    return SimpleNamespace(out=folder / "run", trace=read_trace(folder / "trace"))


@pytest.fixture(scope="module")
def two_process_run(synthetic_root, tmp_path_factory) -> SimpleNamespace:
    folder = tmp_path_factory.mktemp("ddp")
    out, audit, hook = folder / "run", folder / "audit", folder / "hook"
    audit.mkdir()
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(AUDIT_HOOK)
    output = finish(
        torchrun(
            ["--data", str(synthetic_root), "--output", str(out), *RUN, "--epochs", str(EPOCHS)],
            {
                "MINIMAXAD_TRACE_BATCHES": str(folder / "trace"),
                "PYTHONPATH": str(hook),
                "AUDIT_WATCH": str(out),
                "AUDIT_LOG_DIR": str(audit),
            },
        )
    )
    return SimpleNamespace(out=out, output=output, audit=audit, trace=read_trace(folder / "trace"))


def test_torchrun_two_processes_train_like_one(one_process_run, two_process_run):
    assert "distributed: 2 processes (gloo), global batch 11" in two_process_run.output
    single = {s["step"]: s for s in one_process_run.trace}
    ranks = {(s["rank"], s["step"]): s for s in two_process_run.trace}
    assert sorted(single) == list(range(2 * EPOCHS))
    for step, expected in single.items():
        for rank in range(2):  # the global loss and the all-reduced gradient, the same on both ranks
            got = ranks[(rank, step)]
            # step 0 starts from the same weights: equal to float rounding; later steps start from
            # weights that differ by AdamW-amplified rounding noise (see GAUGE)
            tolerance = 1e-5 if step == 0 else 1e-3
            assert got["loss"] == pytest.approx(expected["loss"], rel=tolerance), (step, rank)
            assert got["grad_norm"] == pytest.approx(expected["grad_norm"], rel=tolerance), (step, rank)
    ours, theirs = state_of(two_process_run.out), state_of(one_process_run.out)
    assert ours.keys() == theirs.keys()
    compared = [k for k in theirs if not k.endswith(GAUGE)]
    assert len(compared) > 150
    for key in compared:  # lr is 0.005: a wrong gradient moves weights by about lr per step
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=1e-3, msg=key)
    for key in set(theirs) - set(compared):
        assert (ours[key] - theirs[key]).abs().max() <= 2 * 0.005 * len(single), key


def test_torchrun_sees_every_image_once_per_epoch(synthetic_root, two_process_run):
    steps = two_process_run.trace
    images = sorted(str(p) for p in (synthetic_root / "weave" / "train" / "good").iterdir())
    for epoch in range(EPOCHS):
        seen = sorted(p for s in steps if s["epoch"] == epoch for p in s["paths"])
        assert seen == images, f"epoch {epoch}"
    # global batches of 11 and 1: 6 + 5 images, then 1 + 0 (rank 1 takes part with no image)
    assert sorted((s["rank"], len(s["paths"])) for s in steps if s["epoch"] == 0) == [(0, 1), (0, 6), (1, 0), (1, 5)]


def test_torchrun_only_rank_0_writes_files(two_process_run):
    audit, out = two_process_run.audit, two_process_run.out
    # rank 1 opened nothing for writing in the run folder (the hook ran there: its record exists)
    assert (audit / "writes-rank1.txt").is_file() and (audit / "writes-rank1.txt").read_text() == ""
    written = (audit / "writes-rank0.txt").read_text()
    for name in ("config.json", "train.log", "last.pt", "checkpoint.pt", "metrics.json", "report.html"):
        assert f"/{name}" in written, name
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            "checkpoint.pt",
            "config.json",
            "evaluation.npz",
            "last.pt",
            "metrics.csv",
            "metrics.json",
            "report.html",
            "train.log",
        ]
    )
    log = (out / "train.log").read_text()
    assert "distributed: 2 processes (gloo), global-batch BatchNorm statistics, ADC thresholds global" in log
    assert log.count("epoch 0 done") == 1  # one writer
    assert json.loads((out / "metrics.json").read_text())["categories"].keys() == {"weave"}


def test_killed_torchrun_run_resumes_to_the_same_weights(synthetic_root, two_process_run, tmp_path):
    out = tmp_path / "killed"
    args = [
        "--data",
        str(synthetic_root),
        "--output",
        str(out),
        *RUN,
        "--epochs",
        str(EPOCHS),
        "--no-eval",
        "--checkpoint-every",
        "1",
    ]
    process = torchrun(args, {}, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (out / "last.pt").is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before it could be killed: make it longer"
    kill_torchrun(process.pid)  # torchrun and both workers, mid-run, as a power cut would
    process.communicate(timeout=30)
    interrupted_at = read_checkpoint(out / "last.pt")["training_state"]["epoch"]
    assert 1 <= interrupted_at < EPOCHS, "the run ended before it could be killed: make it longer"
    assert not (out / "checkpoint.pt").exists()

    output = finish(torchrun([*args, "--resume"], {}))
    assert f"resumed from {out / 'last.pt'} at epoch {interrupted_at}" in (out / "train.log").read_text(), output
    # the same processes and order of sums as the uninterrupted run: equal to float rounding
    ours, theirs = state_of(out), state_of(two_process_run.out)
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-7, msg=key)
