"""The benchmark's child process (one per backend) has a time limit: a hung child is killed, with
the processes it started, and the backend is listed as not measured, "timed out after N s"."""

from __future__ import annotations

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
    monkeypatch.setattr(benchmark, "_child_command", lambda spec, out: [sys.executable, "-c", HANGS, str(pid_file)])
    started = time.monotonic()
    result = benchmark._run_child(_spec(), tmp_path, timeout=1.5)
    assert result == {"error": "timed out after 1.5 s"}
    assert time.monotonic() - started < 15
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild), "the child's own child survived the timeout"


def test_a_child_within_its_time_is_read_as_before(tmp_path, monkeypatch):
    def quick(spec_path, out_path):
        code = f"open({str(out_path)!r}, 'w').write('{{\"rows\": [{{\"runs\": 3}}]}}')"
        return [sys.executable, "-c", code]

    monkeypatch.setattr(benchmark, "_child_command", quick)
    assert benchmark._run_child(_spec(), tmp_path, timeout=60) == {"rows": [{"runs": 3}]}
    monkeypatch.setattr(benchmark, "_child_command", lambda s, o: [sys.executable, "-c", "raise SystemExit('boom')"])
    assert benchmark._run_child(_spec(), tmp_path, timeout=60) == {"error": "boom"}


def test_the_default_limit_grows_with_the_work_asked():
    one = benchmark.child_timeout({"image_sizes": [224], "batch_sizes": [1], "seconds": 3.0})
    assert one == 120 + 300 + (30 + 60)
    four = benchmark.child_timeout({"image_sizes": [224, 256], "batch_sizes": [1, 16], "seconds": 3.0})
    assert four == 120 + 2 * 300 + 4 * (30 + 60)
    assert benchmark.child_timeout({"image_sizes": [224], "batch_sizes": [1], "seconds": 100.0}) > 1000


def test_run_benchmark_lists_a_timed_out_backend_as_not_measured(tmp_path, monkeypatch):
    limits = []

    def fake_child(spec, folder, timeout=None):
        limits.append(timeout)
        return {"error": f"timed out after {timeout:g} s"}

    monkeypatch.setattr(benchmark, "matmul_flops_per_second", lambda device, dtype=None: 1e9)
    monkeypatch.setattr(benchmark, "_run_child", fake_child)
    common = dict(backbone="unireplknet_micro", image_sizes=(32,), batch_sizes=(1,), device="cpu", seconds=0.01)
    lines = []
    report = benchmark.run_benchmark(["eager"], output=None, echo=lines.append, child_timeout_s=2.5, **common)
    assert report["not_measured"] == {"eager": "timed out after 2.5 s"} and report["rows"] == []
    assert "  eager: not measured: timed out after 2.5 s" in lines
    benchmark.run_benchmark(["eager"], output=None, echo=lines.append, **common)  # the default limit
    assert limits == [2.5, pytest.approx(120 + 300 + 0.1 + 60)]
