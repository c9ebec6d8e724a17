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


def test_a_status_fault_fails_attempts_with_that_answer():
    # A backend shedding load answers 503 in 1 ms: a failure with a response, retried on
    # another backend; without a retry the client gets the 503.
    shed = sim.Server(sim.constant(0.01), faults=(sim.Fault("status", 0.0, 10.0, 0.001),))
    alive = sim.Server(sim.constant(0.01))
    options = dict(rate=200.0, duration=1.0, seed=3, max_fails=0, retry_budget=math.inf)
    retried = sim.simulate([shed, alive], "round_robin", retries=1, **options)
    assert all(retried.ok) and retried.failed_attempts(0) > 50
    assert retried.attempts_per_request == pytest.approx(
        1 + retried.failed_attempts(0) / len(retried.ok))
    bare = sim.simulate([shed, alive], "round_robin", retries=0, **options)
    assert bare.errors == bare.failed_attempts(0) > 50
    assert all(math.isclose(bare.latencies[i], 0.001) for i in range(len(bare.ok))
               if not bare.ok[i])
    row = next(r for r in bare.pool.stats() if r["url"] == sim.backend_urls(2)[0])
    assert row["failures"] == bare.errors and row["latency_count"] == bare.errors


def test_the_retry_budget_caps_a_storm():
    # Every backend answers 503: without a budget each request makes all three attempts;
    # with the default one (20% of the requests plus 10 a second over 10 s) the retries are
    # held to about 0.2 per request plus what 10 a second adds at this rate.
    shed = sim.Fault("status", 0.0, 100.0, 0.001)
    servers = [sim.Server(sim.constant(0.01), faults=(shed,)) for _ in range(3)]
    options = dict(rate=100.0, duration=60.0, seed=2, retries=2, max_fails=0)
    storm = sim.simulate(servers, "round_robin", retry_budget=math.inf, **options)
    assert storm.attempts_per_request == pytest.approx(3.0)
    held = sim.simulate(servers, "round_robin", **options)
    assert 1.2 < held.attempts_per_request <= 1.2 + 10 / 100 + 0.02
    assert held.pool.pool_stats()["retry_budget"]["exhausted_total"] > 3000


def test_bodies_cross_the_link_after_the_head_one_after_another():
    # Heads after 10 ms; 1 MB bodies over a 100 MB/s link take 10 ms each, in turn. The
    # latency reported is the time to the head; the attempt ends with the body, its bytes
    # reported.
    server = sim.Server(sim.constant(0.010), link=100e6)
    run = sim.simulate([server], "round_robin", rate=20.0, duration=5.0, seed=4,
                       sizes=lambda rng: 1_000_000, request_bytes=300)
    assert all(math.isclose(h, 0.010) for h in run.heads)
    assert min(run.latencies) == pytest.approx(0.020)
    queued = [x for x, h in zip(run.latencies, run.heads, strict=True) if x > h + 0.0101]
    assert queued                                     # a body waited for the one before
    row = run.pool.stats()[0]
    assert row["bytes_received"] == 1_000_000 * len(run.ok)
    assert row["bytes_sent"] == 300 * len(run.ok)
    assert row["latency"] == pytest.approx(0.010)


def test_a_deadline_cuts_the_wait_and_the_retries():
    # Two backends of three answer in 2 s; each try waits 0.2 s, the request 0.35 s in all:
    # after one slow try a retry on the fast one answers at 0.25 s; after two, the second
    # try is cut at the deadline, fails in its words, and no third follows (504).
    slow = sim.Server(sim.constant(2.0))
    fast = sim.Server(sim.constant(0.05))
    run = sim.simulate([slow, slow, fast], "round_robin", rate=20.0, duration=20.0, seed=5,
                       read_timeout=0.2, timeout=0.35, max_fails=0, retry_budget=math.inf)
    assert max(run.heads) <= 0.35 + 1e-9
    answered = {round(x, 9) for x, ok in zip(run.latencies, run.ok, strict=True) if ok}
    failed = {round(x, 9) for x, ok in zip(run.latencies, run.ok, strict=True) if not ok}
    assert answered == {0.05, 0.25} and failed == {0.35}
    without = sim.simulate([slow, slow, fast], "round_robin", rate=20.0, duration=20.0,
                           seed=5, read_timeout=0.2, max_fails=0, retry_budget=math.inf)
    assert max(without.heads) == pytest.approx(0.45)            # two tries, then the third


def test_keys_may_be_drawn_by_a_function():
    run = sim.simulate([sim.Server(sim.constant(0.01)) for _ in range(3)], "ip_hash",
                       rate=100.0, duration=1.0, seed=1,
                       keys=lambda rng: f"k{int(rng.random() * 3)}")
    assert set(run.keys) <= {"k0", "k1", "k2"}
    owner = {}
    for key, (_, index, _) in zip(run.keys, run.attempts, strict=True):
        assert owner.setdefault(key, index) == index


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
    assert [r.number for r in reports] == list(range(1, 15))
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
        bench.main(["--only", "15"])
