"""benchmarks/bench_tiling.py --quick: whole-photo and tiled runs train, evaluate, time and print."""

from __future__ import annotations

import json
import re

import bench_tiling
import pytest


@pytest.mark.slow
def test_quick_run_prints_a_whole_photo_row_and_a_tiled_row(tmp_path, capsys):
    out_dir = tmp_path / "out"
    argv = ["--quick", "--backbone", "unireplknet_micro", "--magnetic", "", "--resize-long-side", "0"]
    assert bench_tiling.main([*argv, "--output", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    assert "command: python benchmarks/bench_tiling.py --quick" in printed
    assert "RANDOM" in printed and "torch " in printed and "budget per model: 2 steps x 2 = 4 network inputs" in printed
    modes = ("whole photo -> 64 px", "tiles 64 at 192 px")
    for mode in modes:
        line = re.search(rf"^grain\s+{re.escape(mode)}\s+(.*)$", printed, re.M)
        assert line, f"no row for {mode}:\n{printed}"
        values = [float(v) for v in line.group(1).replace("|", " ").split()]
        assert len(values) == 11  # 5 metrics as fit gives them, 4 at photo resolution, photos/s, fit s
        assert all(0.0 <= v <= 100.0 for v in values[:9]) and values[9] > 0
    rows = json.loads((out_dir / "results.json").read_text())["datasets"][0]["rows"]
    assert [r["mode"] for r in rows] == list(modes)
    whole, tiled = rows
    assert whole["settings"] == {"image_size": 64} and tiled["settings"] == {"tile_size": 64, "image_size": 64}
    for row in rows:
        assert 0.0 <= row["i_auroc"] <= 1.0 and 0.0 <= row["seg_f1_max"] <= 1.0 and row["photos_per_s"] > 0
    # a tiled model's maps are already at the photo's resolution: both evaluations see the same pixels
    assert tiled["full_resolution"]["p_auroc"] == pytest.approx(tiled["p_auroc"], abs=2e-3)
    assert tiled["full_resolution"]["aupro"] == pytest.approx(tiled["aupro"], abs=2e-3)
    assert (out_dir / "synthetic" / "grain" / "ground_truth").is_dir()  # --output kept when given
