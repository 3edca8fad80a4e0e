"""A single CPU process warns when its threads meet a machine that is already busy."""

from __future__ import annotations

import pytest

import sqr.engine.defaults as defaults


@pytest.fixture
def two_threads_on_two_cores(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(defaults.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(defaults.torch, "get_num_threads", lambda: 2)
    return monkeypatch


def test_busy_machine_warns(two_threads_on_two_cores, caplog) -> None:
    two_threads_on_two_cores.setattr(defaults.os, "getloadavg", lambda: (5.5, 5.0, 4.0))
    with caplog.at_level("WARNING", logger="sqr.engine.defaults"):
        assert defaults.warn_if_cpu_oversubscribed()
    assert "1-minute load average 5.5 on 2 cores) and torch uses 2 threads" in caplog.text
    assert "OMP_NUM_THREADS=1" in caplog.text


def test_idle_machine_or_chosen_threads_do_not_warn(two_threads_on_two_cores, caplog) -> None:
    two_threads_on_two_cores.setattr(defaults.os, "getloadavg", lambda: (0.3, 0.2, 0.1))
    with caplog.at_level("WARNING", logger="sqr.engine.defaults"):
        assert not defaults.warn_if_cpu_oversubscribed()
        two_threads_on_two_cores.setattr(defaults.os, "getloadavg", lambda: (5.5, 5.0, 4.0))
        two_threads_on_two_cores.setenv("OMP_NUM_THREADS", "2")
        assert not defaults.warn_if_cpu_oversubscribed()
    assert not caplog.records
