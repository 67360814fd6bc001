from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from skald.config import Settings
from skald.db.background import JobQueue, JobWorker
from skald.db.supervisor import Supervisor


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def supervisor(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Supervisor]:
    sup = Supervisor(Settings(data_dir=tmp_path / "data"))
    await nursery.start(sup.serve)
    yield sup
    await sup.aclose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def queue(supervisor: Supervisor, clock: FakeClock) -> JobQueue:
    return JobQueue(lambda: supervisor.service, clock)


async def test_claim_oldest_due_first_and_only_matching_types(queue: JobQueue, clock: FakeClock) -> None:
    later = await queue.enqueue("gc", {"n": 1}, delay=10)
    first = await queue.enqueue("gc", {"n": 2})
    await queue.enqueue("other")
    job = await queue.claim_next(["gc"])
    assert job is not None and job.id == first and job.status == "running" and job.payload == {"n": 2}
    assert await queue.claim_next(["gc"]) is None  # the other gc job is not due yet
    clock.now += 10
    job = await queue.claim_next(["gc"])
    assert job is not None and job.id == later
    assert await queue.claim_next(["nothing"]) is None


async def test_complete(queue: JobQueue) -> None:
    job_id = await queue.enqueue("gc")
    job = await queue.claim_next(["gc"])
    assert job is not None
    await queue.complete(job_id)
    stored = await queue.get(job_id)
    assert stored is not None and stored.status == "completed"
    assert await queue.claim_next(["gc"]) is None


async def test_fail_backs_off_exponentially_then_fails_at_max(queue: JobQueue, clock: FakeClock) -> None:
    job_id = await queue.enqueue("gc", max_attempts=3)
    for attempt, delay in ((1, 2.0), (2, 4.0)):
        assert await queue.claim_next(["gc"]) is not None
        job = await queue.fail(job_id, "boom")
        assert job is not None and job.status == "pending" and job.attempts == attempt
        assert job.run_after == clock.now + delay and job.last_error == "boom"
        clock.now += delay - 0.5
        assert await queue.claim_next(["gc"]) is None  # still backing off
        clock.now += 0.5
    assert await queue.claim_next(["gc"]) is not None
    job = await queue.fail(job_id, "boom again")
    assert job is not None and job.status == "failed" and job.attempts == 3
    clock.now += 10_000
    assert await queue.claim_next(["gc"]) is None


async def test_crashed_running_job_is_reclaimed_after_lease(queue: JobQueue, clock: FakeClock) -> None:
    job_id = await queue.enqueue("gc")
    assert await queue.claim_next(["gc"], lease_seconds=60) is not None
    # The worker "crashed": nobody completes it. Before the lease ends nothing is reclaimed.
    clock.now += 59
    assert await queue.reclaim_expired() == []
    assert await queue.claim_next(["gc"]) is None
    clock.now += 1
    assert await queue.reclaim_expired() == [job_id]
    job = await queue.get(job_id)
    assert job is not None and job.status == "pending" and job.attempts == 1
    assert job.last_error is not None and "lease expired" in job.last_error
    clock.now += 2
    again = await queue.claim_next(["gc"])
    assert again is not None and again.id == job_id


async def test_jobs_survive_a_restart(tmp_path: Path, clock: FakeClock) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    async with trio.open_nursery() as nursery:
        sup = Supervisor(settings)
        await nursery.start(sup.serve)
        job_id = await JobQueue(lambda: sup.service, clock).enqueue("gc", {"k": "v"})
        await sup.aclose()
    async with trio.open_nursery() as nursery:
        sup = Supervisor(settings)
        await nursery.start(sup.serve)
        job = await JobQueue(lambda: sup.service, clock).claim_next(["gc"])
        assert job is not None and job.id == job_id and job.payload == {"k": "v"}
        await sup.aclose()


async def test_worker_runs_handlers_and_records_failures(queue: JobQueue) -> None:
    seen: list[dict[str, Any]] = []

    async def ok(payload: dict[str, Any]) -> None:
        seen.append(payload)

    async def broken(payload: dict[str, Any]) -> None:
        raise RuntimeError("handler broke")

    worker = JobWorker(queue)
    worker.register("ok", ok)
    worker.register("broken", broken)
    good = await queue.enqueue("ok", {"x": 1})
    bad = await queue.enqueue("broken")
    assert await worker.run_once() and await worker.run_once()
    assert not await worker.run_once()
    assert seen == [{"x": 1}]
    good_job, bad_job = await queue.get(good), await queue.get(bad)
    assert good_job is not None and good_job.status == "completed"
    assert bad_job is not None and bad_job.status == "pending" and bad_job.attempts == 1
    assert bad_job.last_error is not None and "handler broke" in bad_job.last_error
