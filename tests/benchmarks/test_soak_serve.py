"""The soak test of the server (benchmarks/soak_serve.py): its helpers, and one short run."""

from __future__ import annotations

import json
import threading
import time

import pytest
from soak_serve import Limits, Photos, Record, Soak, main, memory_figures, multipart, parse_args, prometheus_counts


def test_expected_status_follows_the_servers_order_of_checks():
    limits = Limits(max_pixels=16_000_000, max_request_pixels=20_000_000, max_batch=8)
    assert limits.expected_status([4000 * 4000] * 16) == 413  # each fits, all together do not
    assert limits.expected_status([5000 * 5000]) == 400  # one image over --max-pixels
    assert limits.expected_status([5000 * 5000] * 16) == 400  # the per-image check comes first
    assert limits.expected_status([4000 * 4000]) == 200
    assert limits.expected_status([100] * 65) == 413  # more images than the queue holds (64)


def test_limits_are_options_of_minimaxad_serve():
    from minimaxad.cli import build_parser

    limits = Limits(max_wait_ms=2.5, workers_threads=3)
    args = build_parser().parse_args(["serve", "--checkpoint", "c.pt", *limits.options()])
    assert {name: getattr(args, name) for name in vars(limits)} == vars(limits)


def test_multipart_bodies_parse_as_the_server_parses_them():
    pytest.importorskip("python_multipart")
    from minimaxad.inference.serve import parse_multipart

    body, content_type = multipart([b"first", b"\r\n--second"], {"category": "weave", "return": "mask"})
    images, fields = parse_multipart(body, content_type)
    assert [data for _, data in images] == [b"first", b"\r\n--second"]
    assert fields == {"category": "weave", "return": "mask"}


def test_memory_figures_of_a_steady_leak():
    # 100 MB that grows 5 MB in the first 30 s (warm-up), then 0.5 MB per minute
    samples = [{"t": t, "rss_mb": 100 + min(t, 30) / 6 + max(0, t - 30) / 120} for t in range(0, 600)]
    samples[100]["rss_mb"] = None  # the process could not be read once
    figures = memory_figures(samples, 600)
    assert figures["warmup_s"] == 60 and figures["samples"] == 599
    assert figures["slope_mb_per_min"] == pytest.approx(0.5, rel=1e-6)
    assert figures["after_warmup_mb"] == pytest.approx(105 + 32 / 120, abs=1e-6)  # median of t = 60..64
    first = (100 + 29 / 6 + 105) / 2  # t = 0..59: the median sits where the warm-up ends
    last = 105 + (569 - 30) / 120  # t = 539..599 (the last 60 s up to the last sample)
    assert figures["last_minus_first_window_mb"] == pytest.approx(last - first, abs=1e-6)
    assert memory_figures([], 60)["samples"] == 0


def test_client_loops_stop_at_the_cap_the_deadline_or_a_stop():
    photos = Photos([b""], [], b"", b"", [], b"", b"")
    soak = Soak(1, time.monotonic() + 60, Limits(), photos, Record(), 1.0, None, None, [])
    assert list(soak.rounds(cap=3)) == [0, 1, 2]
    soak.stop.set()
    assert list(soak.rounds(cap=3)) == []
    late = Soak(1, time.monotonic() - 1, Limits(), photos, Record(), 1.0, None, None, [])
    assert list(late.rounds(cap=3)) == []
    started = time.monotonic()
    late.pause(10)  # past the deadline: no sleep
    assert time.monotonic() - started < 1


def test_record_counts_from_many_threads():
    record = Record()

    def add() -> None:
        for i in range(200):
            record.add("good_raw", "200" if i % 4 else "503", i % 4 != 0, 0.01)

    threads = [threading.Thread(target=add) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert record.counts["good_raw"] == {"200": 600, "503": 200}
    assert record.unexpected["good_raw"] == 200 and len(record.examples) == 40
    assert len(record.latencies["good_raw"]) == 600


def test_prometheus_counts_and_the_connection_budget():
    text = '# HELP x\nminimaxad_errors_total{kind="bad_image"} 5.0\nminimaxad_errors_created{kind="a"} 1.7e9\n'
    assert prometheus_counts(text, "minimaxad_errors_total") == {'{kind="bad_image"}': 5.0}
    with pytest.raises(SystemExit):
        parse_args(["--half-open", "30"])  # the soak's own connections would meet --max-connections
    assert parse_args(["--minutes", "1"]).minutes == 1


@pytest.mark.slow
def test_a_short_soak_passes(tmp_path, capsys):
    """Every client kind once or more in ~10 s of load against the real server."""
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    pytest.importorskip("uvicorn", reason="the serve extra is not installed")
    output = tmp_path / "soak.json"
    arguments = ["--minutes", "0.17", "--output", str(output), "--good-clients", "1", "--multipart-clients", "1"]
    arguments += ["--half-open", "1", "--hold-seconds", "1", "2", "--slow-seconds", "1"]
    code = main(arguments)
    printed = capsys.readouterr().out
    report = json.loads(output.read_text())
    assert code == 0, printed
    assert report["passed"] and report["bare_category"] == "washer" and report["end"]["alive"]
    assert {"good_raw", "good_multipart", "good_category", "slow_upload"} <= set(report["requests"])
    assert report["score"]["unchanged"] and report["memory"]["samples"] >= 5
    assert "command: " in printed and "PASS" in printed
