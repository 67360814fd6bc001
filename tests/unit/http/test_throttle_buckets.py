"""Token bucket peeking used by the per-IP guard (injectable clock, no sleeps)."""

from __future__ import annotations

from skald.http.throttle import Bucket


def test_wait_time_peeks_without_spending() -> None:
    now = [0.0]
    bucket = Bucket(rate=1.0, burst=2, clock=lambda: now[0])
    assert bucket.wait_time("k") == 0.0
    assert bucket.try_acquire("k") == 0.0
    assert bucket.try_acquire("k") == 0.0
    assert bucket.wait_time("k") == 1.0
    assert bucket.wait_time("k") == 1.0  # peeking spent nothing
    now[0] = 0.5
    assert bucket.wait_time("k") == 0.5
    now[0] = 1.0
    assert bucket.wait_time("k") == 0.0
    assert bucket.try_acquire("k") == 0.0
    assert bucket.try_acquire("k") > 0
    assert bucket.wait_time("other") == 0.0
