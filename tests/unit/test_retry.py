"""The retry layer: transient errors are retried with backoff under attempts and a deadline;
everything else fails at once."""

from __future__ import annotations

import random

import pytest

from wsfuse.backends.faults import FaultInjectingBackend
from wsfuse.backends.memory import MemoryBackend
from wsfuse.backends.retry import RetryingBackend, RetryPolicy, call_with_retries
from wsfuse.errors import NotFound, PermissionDenied, Transient, Unavailable

FAST = RetryPolicy(max_attempts=4, base_delay=0.001, max_delay=0.01, deadline=5)


def wrapped(policy: RetryPolicy = FAST) -> tuple[FaultInjectingBackend, RetryingBackend]:
    faulty = FaultInjectingBackend(MemoryBackend())
    return faulty, RetryingBackend(faulty, policy)


def test_transient_errors_are_retried_until_success() -> None:
    faulty, backend = wrapped()
    backend.put("k", b"data")
    faulty.fail("get_range", Transient("503 SlowDown"), times=3)
    assert backend.get_range("k", 0, 4) == b"data"
    assert faulty.calls["get_range"] == 4


def test_attempts_are_bounded() -> None:
    faulty, backend = wrapped()
    faulty.fail("head", Transient("connection reset"), times=100)
    with pytest.raises(Unavailable, match="head 'k' failed after 4 attempt"):
        backend.head("k")
    assert faulty.calls["head"] == 4


def test_permanent_errors_are_not_retried() -> None:
    faulty, backend = wrapped()
    with pytest.raises(NotFound):
        backend.head("missing")
    faulty.fail("list", PermissionDenied("AccessDenied"))
    with pytest.raises(PermissionDenied):
        backend.list("")
    assert faulty.calls["head"] == 1
    assert faulty.calls["list"] == 1


def test_deadline_bounds_total_time() -> None:
    now = [0.0]
    sleeps: list[float] = []

    def sleep(d: float) -> None:
        sleeps.append(d)
        now[0] += d

    def always_fails() -> None:
        now[0] += 1.0  # each attempt takes a second
        raise Transient("timeout")

    policy = RetryPolicy(max_attempts=100, base_delay=1, max_delay=1, deadline=5)
    with pytest.raises(Unavailable):
        call_with_retries(policy, "op", always_fails, sleep=sleep, clock=lambda: now[0])
    assert now[0] <= 5 + 1  # never sleeps past the deadline; at most one attempt in flight over it


def test_backoff_is_jittered_exponential_and_capped() -> None:
    policy = RetryPolicy(max_attempts=10, base_delay=0.1, max_delay=2.0)
    delays = list(policy.delays(random.Random(1)))
    assert len(delays) == 9
    for n, d in enumerate(delays):
        assert 0 <= d <= min(2.0, 0.1 * 2**n)
    assert len(set(delays)) == len(delays)  # jitter: no two retries in lockstep


def test_retry_logs_rise_in_level(caplog: pytest.LogCaptureFixture) -> None:
    faulty, backend = wrapped(RetryPolicy(max_attempts=6, base_delay=0.001, max_delay=0.001))
    backend.put("k", b"x")
    faulty.fail("head", Transient("flaky"), times=5)
    with caplog.at_level("DEBUG", logger="wsfuse.backends.retry"):
        backend.head("k")
    levels = [r.levelname for r in caplog.records]
    assert levels == ["DEBUG", "INFO", "INFO", "WARNING", "WARNING"]
