"""The job queue's streaming forms under SIGKILL, against a real ``skald serve`` process (docs/jobs.md).

A producer streams enqueues over one ``POST …/jobs/stream`` (unique keys, so a resend is safe) while 4
workers each run one ``POST …/jobs/work`` (every line acks the jobs of the line before and claims up to
10). The server is killed with SIGKILL at a random moment (counted in acknowledged enqueues), restarted,
and the run finishes over new streams. Then: every enqueue line acknowledged before the kill is there,
every ack answered ok before the kill is ``completed`` with its result, no job was acknowledged twice,
and every job ended completed. 2,000 jobs: the paths are the same at any size (leases of 2 s bring the
jobs running at the kill back soon after the restart).
"""

from __future__ import annotations

import random
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from support.jobs import all_jobs
from support.live import ADMIN_TOKEN, SkaldProcess
from support.ndjson import duplex_ndjson

J = "/api/v1/db/work/jobs"
HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
TOTAL = 2000
WORKERS = 4
GONE = (EOFError, OSError, trio.BrokenResourceError, trio.ClosedResourceError)


class Run:
    def __init__(self) -> None:
        self.enqueued: dict[int, int] = {}  # n -> job id, from acknowledged lines
        self.acks: Counter[int] = Counter()  # job id -> acks answered ok
        self.results: dict[int, int] = {}


def _job(n: int) -> dict[str, Any]:
    # unique for an hour, finished or not: a line resent after the kill names the job it made before
    return {"queue": "q", "payload": {"n": n}, "unique_key": f"n{n}", "unique_for_seconds": 3600,
            "max_attempts": 20, "backoff": {"strategy": "none"}}


async def _produce(url: str, run: Run, kill: Any) -> None:
    try:
        async with duplex_ndjson(url, J + "/stream", ADMIN_TOKEN) as stream:
            for first in range(0, TOTAL, 100):
                await stream.send(*(_job(n) for n in range(first, first + 100)))
            await stream.end()
            for _ in range(TOTAL):
                ack = await stream.receive()
                assert "id" in ack, ack
                run.enqueued[ack["line"] - 1] = ack["id"]
                kill()
    except GONE:
        return  # killed: the next round resends every line (unique keys make that safe)


async def _work(url: str, run: Run, name: str, done: trio.Event, kill: Any) -> None:
    step = {"queues": ["q"], "worker_id": name, "lease_seconds": 2, "wait_seconds": 1, "max_jobs": 10}
    acks: list[dict[str, Any]] = []
    try:
        async with duplex_ndjson(url, J + "/work", ADMIN_TOKEN) as stream:
            while not done.is_set():
                await stream.send({**step, "ack": acks})
                answer = await stream.receive()
                assert "problem" not in answer, answer
                for sent, got in zip(acks, answer["acks"], strict=True):
                    if got["ok"]:
                        run.acks[got["id"]] += 1
                        run.results[got["id"]] = sent["result"]
                kill()
                acks = [{"id": j["id"], "lease": j["lease"]["token"], "result": j["payload"]["n"]}
                        for j in answer["jobs"]]
                if not answer["jobs"] and len(run.enqueued) == TOTAL and await _finished(url):
                    done.set()
    except GONE:
        return


async def _finished(url: str) -> bool:
    async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=30) as client:
        queues = (await client.get(J + "/queues")).json()["queues"]
    counts = next((q["counts"] for q in queues if q["name"] == "q"), None)
    return counts is not None and counts["queued"] + counts["retrying"] + counts["running"] == 0


async def _round(url: str, run: Run, proc: SkaldProcess, kill_at: int | None) -> None:
    done = trio.Event()

    def kill() -> None:
        if kill_at is not None and len(run.enqueued) >= kill_at and not done.is_set():
            proc.signal(signal.SIGKILL)
            done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_produce, url, run, kill)
        for n in range(WORKERS):
            nursery.start_soon(_work, url, run, f"w{n}", done, kill)


async def _all_jobs(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    return await all_jobs(client, J, "q")


@pytest.mark.slow
async def test_streamed_enqueues_and_acks_survive_sigkill(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    run = Run()
    proc = SkaldProcess(data_dir)
    url = await proc.start()
    try:
        async with httpx.AsyncClient(base_url=url, headers=HEADERS) as client:
            assert (await client.put("/api/v1/db/work")).status_code == 201
        with trio.fail_after(120):
            await _round(url, run, proc, kill_at=random.randint(TOTAL // 8, TOTAL // 2))
        assert await proc.wait() == -signal.SIGKILL
    finally:
        await proc.stop()
    enqueued_before_kill = dict(run.enqueued)
    acked_before_kill = set(run.acks)
    proc = SkaldProcess(data_dir)
    url = await proc.start()
    try:
        async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=30) as client:
            present = {job["id"]: job for job in await _all_jobs(client)}
        assert set(enqueued_before_kill.values()) <= set(present), "an acknowledged enqueue line was lost"
        assert all(present[i]["state"] == "completed" for i in acked_before_kill), "an acknowledged ack was lost"
        run.enqueued.clear()
        with trio.fail_after(120):
            await _round(url, run, proc, kill_at=None)
        async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=30) as client:
            jobs = await _all_jobs(client)
    finally:
        await proc.stop()
    by_id = {job["id"]: job for job in jobs}
    assert len(jobs) == TOTAL  # the lines resent after the kill were duplicates of their unique keys
    assert all(run.enqueued[n] == i for n, i in enqueued_before_kill.items())  # the same jobs, not copies
    assert sorted(job["payload"]["n"] for job in jobs) == list(range(TOTAL))
    assert {job["state"] for job in jobs} == {"completed"}
    assert max(run.acks.values()) == 1, "a job was acknowledged twice"
    for job_id, result in run.results.items():
        assert by_id[job_id]["result"] == result
