"""The job worker runs inside a live server (even without object storage configured)."""

from __future__ import annotations

from typing import Any

import trio
from support.live import LiveServer

from skald.db.background import JobQueue, JobWorker


async def test_background_worker_runs_enqueued_jobs(server: LiveServer) -> None:
    worker: JobWorker = server.state.job_worker
    queue: JobQueue = server.state.jobs
    ran = trio.Event()
    seen: list[dict[str, Any]] = []

    async def handler(payload: dict[str, Any]) -> None:
        seen.append(payload)
        ran.set()

    worker.register("test.echo", handler)
    job_id = await queue.enqueue("test.echo", {"hello": "world"})
    with trio.fail_after(20):
        await ran.wait()
        for _ in range(2000):  # the worker completes the job right after the handler returns
            job = await queue.get(job_id)
            if job is not None and job.status == "completed":
                break
            await trio.sleep(0.01)
        else:
            raise AssertionError("job never completed")
    assert seen == [{"hello": "world"}]
    async with server.client() as client:
        metrics = (await client.get("/metrics")).text
        assert 'skald_jobs_runs_total{outcome="completed",type="test.echo"} 1.0' in metrics
        r = await client.post("/api/v1/db/x/blobs/claim", json={"sha256": "a" * 64, "ref": "r"})
        assert r.status_code in {404, 503}  # no document x; never a 500
