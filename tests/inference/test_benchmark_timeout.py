"""The benchmark's child processes (one per backend, kept alive and driven in rounds) have a time
limit per step: a hung child is killed, with the processes it started, and the backend is listed
as not measured, "timed out after N s"; the others are measured interleaved."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from minimaxad.inference import benchmark

HANGS = """
import subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
open(sys.argv[1], "w").write(str(grandchild.pid))
time.sleep(120)
"""

# a child that answers every command at once, and logs what it was asked to a file
ANSWERS = """
import json, sys
log = open(sys.argv[1], "a")
for line in sys.stdin:
    command = json.loads(line)
    log.write(json.dumps({"backend": sys.argv[2], **command}) + "\\n"); log.flush()
    if command["cmd"] == "quit":
        break
    reply = {"setup": {"first_call_s": 0.5}, "memory": {"peak_memory_mb": 10.0}}.get(command["cmd"])
    if command["cmd"] == "measure":
        reply = {"runs": 3, "elapsed": 0.3, "latencies": [0.1, 0.1, 0.1]}
    if sys.argv[2] == "broken" and command["cmd"] == "setup":
        reply = {"error": "RuntimeError: boom"}
    print(json.dumps(reply), flush=True)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")  # a zombie (dead, not yet reaped by init) counts as gone
    return not (stat.is_file() and stat.read_text().split(")")[-1].split()[0] == "Z")


def _spec(backend: str = "eager") -> dict:
    return {"backend": backend, "image_sizes": [64], "batch_sizes": [1, 2], "seconds": 0.05}


def test_a_hung_child_is_killed_with_its_children_and_reported(tmp_path, monkeypatch):
    pid_file = tmp_path / "grandchild.pid"
    monkeypatch.setattr(benchmark, "_child_command", lambda spec: [sys.executable, "-c", HANGS, str(pid_file)])
    started = time.monotonic()
    child = benchmark.BackendChild(_spec(), tmp_path)
    deadline = time.monotonic() + 30
    while not pid_file.is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert child.request({"cmd": "setup", "size": 64}, timeout=1.5) == {"error": "timed out after 1.5 s"}
    assert time.monotonic() - started < 40
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild), "the child's own child survived the timeout"
    assert child.request({"cmd": "memory"}, timeout=1) == {"error": "the child process was stopped"}


def test_a_child_that_dies_is_reported_with_its_last_words(tmp_path, monkeypatch):
    monkeypatch.setattr(benchmark, "_child_command", lambda spec: [sys.executable, "-c", "raise SystemExit('boom')"])
    child = benchmark.BackendChild(_spec(), tmp_path)
    assert child.request({"cmd": "setup", "size": 64}, timeout=60) == {"error": "boom"}
    child.close()


def test_the_default_limit_grows_with_the_work_asked():
    one = benchmark.child_timeout({"image_sizes": [224], "batch_sizes": [1], "seconds": 3.0})
    assert one == 120 + 300 + (30 + 60)
    four = benchmark.child_timeout({"image_sizes": [224, 256], "batch_sizes": [1, 16], "seconds": 3.0})
    assert four == 120 + 2 * 300 + 4 * (30 + 60)
    assert benchmark.child_timeout({"image_sizes": [224], "batch_sizes": [1], "seconds": 100.0}) > 1000


def test_backends_take_turns_in_rounds_and_a_failed_one_is_listed(tmp_path, monkeypatch):
    log = tmp_path / "commands.jsonl"

    def command(spec_path):
        backend = json.loads(Path(spec_path).read_text())["backend"]
        return [sys.executable, "-c", ANSWERS, str(log), "broken" if backend == "fused" else backend]

    monkeypatch.setattr(benchmark, "matmul_flops_per_second", lambda device, dtype=None: 1e9)
    monkeypatch.setattr(benchmark, "_child_command", command)
    lines = []
    report = benchmark.run_benchmark(
        ["eager", "torchscript", "fused"],
        backbone="unireplknet_micro",
        image_sizes=(32,),
        batch_sizes=(1, 2),
        device="cpu",
        seconds=0.3,
        rounds=3,
        output=None,
        echo=lines.append,
    )
    assert report["not_measured"] == {"fused": "RuntimeError: boom"}
    assert "  fused: not measured: RuntimeError: boom" in lines
    rows = {(r["backend"], r["batch"]): r for r in report["rows"]}
    assert set(rows) == {(b, n) for b in ("eager", "torchscript") for n in (1, 2)}
    assert rows[("eager", 2)]["images_per_second"] == pytest.approx(2 * 9 / 0.9)
    assert rows[("eager", 2)]["images_per_second_by_round"] == pytest.approx([20.0] * 3)
    assert rows[("eager", 1)]["peak_memory_mb"] == 10.0 and rows[("eager", 1)]["first_call_s"] == 0.5
    commands = [json.loads(line) for line in log.read_text().splitlines()]
    measured = [(c["backend"], c["batch"]) for c in commands if c["cmd"] == "measure"]
    # every backend measures each batch once per round, the backends alternating, each round led by another
    assert measured == [
        ("eager", 1), ("torchscript", 1), ("eager", 2), ("torchscript", 2),
        ("torchscript", 1), ("eager", 1), ("torchscript", 2), ("eager", 2),
        ("eager", 1), ("torchscript", 1), ("eager", 2), ("torchscript", 2),
    ]  # fmt: skip
    assert all(c["seconds"] == pytest.approx(0.1) for c in commands if c["cmd"] == "measure")
    setups = [c["backend"] for c in commands if c["cmd"] == "setup"]
    assert setups == ["eager", "torchscript", "broken"]  # one at a time, before any measurement
    assert [c["backend"] for c in commands if c["cmd"] == "quit"] == ["broken", "eager", "torchscript"]


def test_a_timed_out_backend_is_not_measured_and_the_others_are(tmp_path, monkeypatch):
    def command(spec_path):
        backend = json.loads(Path(spec_path).read_text())["backend"]
        if backend == "fused":
            return [sys.executable, "-c", "import time; time.sleep(60)"]
        return [sys.executable, "-c", ANSWERS, str(tmp_path / "log"), backend]

    monkeypatch.setattr(benchmark, "matmul_flops_per_second", lambda device, dtype=None: 1e9)
    monkeypatch.setattr(benchmark, "_child_command", command)
    common = dict(backbone="unireplknet_micro", image_sizes=(32,), batch_sizes=(1,), device="cpu", seconds=0.01)
    lines = []
    report = benchmark.run_benchmark(["eager", "fused"], output=None, echo=lines.append, child_timeout_s=2.5, **common)
    assert report["not_measured"] == {"fused": "timed out after 2.5 s"}
    assert [r["backend"] for r in report["rows"]] == ["eager"]
    assert "  fused: not measured: timed out after 2.5 s" in lines
