"""Which test modules ``pytest -m core`` runs (tests/conftest.py): the fast standard-library
ones, so a developer runs them alone in seconds and a misspelled entry cannot silently move a
module to the integration run."""

from __future__ import annotations

import pytest

from ..conftest import CORE_FILES, TESTS, is_core


def test_every_listed_core_module_exists():
    missing = sorted(name for name in CORE_FILES if not (TESTS / name).is_file())
    assert not missing, f"CORE_FILES names modules that do not exist: {missing}"


@pytest.mark.parametrize("module", [
    "observe/test_snapshot.py",    # snapshot and status page on a FakeClock, no server
    "observe/test_page.py",
    "core/test_stats.py",
])
def test_fake_clock_modules_are_core(module):
    assert is_core(TESTS / module, "test_anything")


@pytest.mark.parametrize("module", ["observe/test_app.py", "observe/test_metrics.py",
                                    "demo/test_serve.py"])
def test_modules_with_servers_or_extras_are_not(module):
    assert not is_core(TESTS / module, "test_anything")


def test_a_slow_test_of_a_core_module_is_not_core():
    slow = "test_quick_benchmark_meets_every_target_but_the_known_misses"
    assert not is_core(TESTS / "core/test_simulator.py", slow)
    assert is_core(TESTS / "core/test_simulator.py", "test_anything")
