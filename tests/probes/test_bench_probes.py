"""benchmarks/bench_probes.py stays runnable: a small run (20 backends, short phases) exits 0,
every probe passed, and it prints each figure it promises."""

from __future__ import annotations

import pathlib
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "bench_probes.py"


def test_a_small_run_prints_the_cpu_share_and_the_ratio():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--backends", "20", "--interval", "0.2",
         "--seconds", "0.4", "--rounds", "2"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "20 backends probed every 0.2 s" in out
    assert "failed 0" in out
    assert "connections opened per probe" in out
    assert "% of one core" in out and "us per probe" in out
    assert "while probing: ratio" in out
