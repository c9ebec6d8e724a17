"""The balance-quality simulator (benchmarks/simulator.py) and the quick benchmark run."""

from __future__ import annotations

import importlib.util
import logging
import math
import statistics
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


sim = _load("simulator")


def test_mm1_mean_time_in_system_is_the_textbook_one():
    # One FIFO server, exponential service (mean 10 ms), Poisson arrivals at 60% load:
    # the mean time in system is 1 / (mu - lambda) = 1 / (100 - 60) = 25 ms.
    server = sim.Server(sim.exponential(0.010), workers=1)
    run = sim.simulate([server], "round_robin", rate=60.0, duration=1000.0, seed=7)
    measured = run.measured(start=50.0)
    mean = statistics.fmean(run.latencies[i] for i in measured)
    assert len(measured) > 50_000
    assert mean == pytest.approx(0.025, rel=0.05)
    assert all(run.ok)


def test_unlimited_workers_is_a_pure_delay():
    server = sim.Server(sim.constant(0.2), workers=None)
    run = sim.simulate([server], "round_robin", rate=500.0, duration=2.0, seed=1)
    assert set(round(x, 9) for x in run.latencies) == {0.2}


def _fingerprint(run):
    return (run.arrivals, run.latencies, run.ok, run.attempts, run.ejections)


def test_a_run_is_reproducible_from_its_seed():
    servers = [sim.Server(sim.lognormal(0.05, 0.3), workers=4) for _ in range(4)]
    servers[0] = sim.Server(sim.lognormal(0.05, 0.3), workers=4,
                            faults=(sim.Fault("refuse", 1.0, 2.0, 0.001),))
    first = sim.simulate(servers, "latency", rate=400.0, duration=3.0, seed=11, retries=1)
    again = sim.simulate(servers, "latency", rate=400.0, duration=3.0, seed=11, retries=1)
    other = sim.simulate(servers, "latency", rate=400.0, duration=3.0, seed=12, retries=1)
    assert _fingerprint(first) == _fingerprint(again)
    assert _fingerprint(first) != _fingerprint(other)


def test_refused_connections_are_retried_on_another_backend():
    # The retry budget off: every other request fails once here, far beyond its 20%.
    dead = sim.Server(sim.constant(0.01), faults=(sim.Fault("refuse", 0.0, 10.0, 0.001),))
    alive = sim.Server(sim.constant(0.01))
    run = sim.simulate([dead, alive], "round_robin", rate=200.0, duration=1.0, seed=3,
                       retries=1, max_fails=0, retry_budget=math.inf)
    assert all(run.ok)
    assert run.failed_attempts(0) > 50                  # max_fails=0: never ejected
    assert run.failed_attempts(1) == 0
    without = sim.simulate([dead, alive], "round_robin", rate=200.0, duration=1.0, seed=3,
                           retries=0, max_fails=0)
    assert without.errors == without.failed_attempts(0) > 50


def test_a_read_timeout_is_retried_only_for_idempotent_requests():
    hole = sim.Server(sim.constant(0.01), faults=(sim.Fault("blackhole", 0.0, 10.0),))
    alive = sim.Server(sim.constant(0.01))
    options = dict(rate=100.0, duration=1.0, seed=5, retries=1, read_timeout=0.5, max_fails=0)
    get = sim.simulate([hole, alive], "round_robin", **options)
    post = sim.simulate([hole, alive], "round_robin", idempotent=False, **options)
    assert all(get.ok)
    retried = [x for x in get.latencies if math.isclose(x, 0.51)]   # timeout, then 10 ms
    assert len(retried) == get.failed_attempts(0) > 20
    assert post.errors == post.failed_attempts(0) > 20
    assert all(math.isclose(post.latencies[i], 0.5) for i in range(len(post.ok))
               if not post.ok[i])


def test_ejections_are_recorded_on_the_simulated_clock():
    dead = sim.Server(sim.constant(0.01), faults=(sim.Fault("refuse", 0.5, 10.0, 0.001),))
    run = sim.simulate([dead, sim.Server(sim.constant(0.01))], "round_robin", rate=200.0,
                       duration=1.0, seed=2, retries=0)
    assert run.ejections and run.ejections[0][1] == 0
    assert 0.5 < run.ejections[0][0] < 0.6
    assert run.failed_attempts(0) == 3                  # max_fails, then ejected


def test_probes_are_spread_jittered_never_overlap_and_stop_with_the_run():
    # Four backends probed every 2 s for 20 s: first probes at 0, 0.5, 1, 1.5 s; then every
    # 2 s +-10% after the previous one was sent; a black-holed one's probe ends at the timeout.
    hole = sim.Fault("blackhole", 0.0, 30.0)
    servers = [sim.Server(sim.constant(0.01), faults=(hole,))] + \
        [sim.Server(sim.constant(0.01)) for _ in range(3)]
    run = sim.simulate(servers, "round_robin", rate=10.0, duration=20.0, seed=4,
                       probe_interval=2.0, probe_timeout=2.5)
    by_server = {i: [t for t, index, _ in run.probes if index == i] for i in range(4)}
    assert [times[0] for times in by_server.values()] == \
        pytest.approx([2.5, 0.5 + sim.PROBE_TIME, 1.0 + sim.PROBE_TIME, 1.5 + sim.PROBE_TIME])
    for i, times in by_server.items():
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        low, high = (2.5, 2.5) if i == 0 else (1.8, 2.2)   # the timeout outlasts the interval
        assert all(low - 1e-9 <= gap <= high + 1e-9 for gap in gaps)
        assert 7 <= len(times) <= 12
    assert {ok for _, index, ok in run.probes if index == 0} == {False}
    assert {ok for _, index, ok in run.probes if index > 0} == {True}
    assert max(t for t, _, _ in run.probes) < 20.0 + 2.5  # bounded: none sent after the run


def test_probes_take_a_failing_backend_out_before_traffic_starts():
    dead = sim.Server(sim.constant(0.01), faults=(sim.Fault("refuse", 0.0, 30.0, 0.001),))
    run = sim.simulate([dead, sim.Server(sim.constant(0.01))], "round_robin", rate=100.0,
                       duration=10.0, seed=6, retries=0, probe_interval=1.0, traffic_start=3.0)
    assert min(run.arrivals) >= 3.0
    assert all(run.ok) and run.failed_attempts(0) == 0
    downs = [(t, type(event).__name__) for t, event in run.events
             if type(event).__name__ == "BackendDown"]
    assert len(downs) == 1 and downs[0][0] < 0.01


def test_servers_carry_their_priority_into_the_pool():
    servers = [sim.Server(sim.constant(0.01)), sim.Server(sim.constant(0.01), priority=1)]
    run = sim.simulate(servers, "round_robin", rate=100.0, duration=2.0, seed=1)
    assert [b.priority for b in run.pool.backends] == [0, 1]
    assert run.failed_attempts() == 0 and {index for _, index, _ in run.attempts} == {0}


def test_bad_faults_are_rejected():
    with pytest.raises(ValueError, match="fault kind 'melt'"):
        sim.Fault("melt", 0.0, 1.0)
    with pytest.raises(ValueError, match="empty"):
        sim.Fault("slow", 2.0, 1.0, 2.0)


# The benchmark itself, in its quick mode, so it cannot rot. A target missed for a reason
# given in benchmarks/README.md ("Targets missed") is listed here; every other target must
# be met. Remove a line here when its target is met.
KNOWN_MISSES_QUICK: set[str] = set()


def test_quick_benchmark_meets_every_target_but_the_known_misses():
    bench = _load("bench_quality")
    reports = bench.run(quick=True)
    assert [r.number for r in reports] == list(range(1, 11))
    checks = {name: ok for r in reports for name, ok in r.checks.items()}
    assert len(checks) >= 30
    assert KNOWN_MISSES_QUICK <= set(checks)
    assert {name for name, ok in checks.items() if not ok} == KNOWN_MISSES_QUICK
    for report in reports:
        table = report.render()
        assert table.startswith(f"## Scenario {report.number}:")
        assert table.count("\n|") >= 3


def test_benchmark_command_line(capsys):
    bench = _load("bench_quality")
    log = logging.getLogger("lbmiddleware")
    level = log.level
    assert bench.main(["--quick", "--no-plots", "--only", "7"]) == 0
    # it quiets the expected ejections while it runs, and only then (the tests after it read
    # the lbmiddleware logger's warnings)
    assert log.level == level
    out = capsys.readouterr().out
    assert "| 5, 3, 2 | a b c a a b a c b a | exact |" in out
    assert "every target met" in out
    with pytest.raises(SystemExit):
        bench.main(["--only", "11"])
