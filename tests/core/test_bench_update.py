"""The update() benchmark (benchmarks/bench_update.py), at its smallest size, so it cannot rot."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

import lbmiddleware as lb

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


bench = _load("bench_update")


@pytest.mark.parametrize("mode", ["static", "source"])
@pytest.mark.parametrize("policy", lb.POLICIES)
def test_an_unchanged_set_sends_no_event_and_changes_are_timed(policy, mode):
    run = bench.Bench(10, policy, mode)
    run.calls, run.changes = 10, 1
    run.round()
    assert run.unchanged_events() == 0
    assert all(0 < run.best[case] < 1.0 for case in bench.CASES)
