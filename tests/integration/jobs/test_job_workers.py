"""The client library's job workers against a real server: trio, asyncio and threads."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import trio
from support.live import ADMIN_TOKEN, LiveServer

from skald.client import AsyncClient, Client
from skald.client.worker import HANDED_BACK, AsyncWorker, JobContext, Worker

DOC = "workers"


async def _setup(server: LiveServer, jobs: list[dict[str, Any]]) -> list[int]:
    async with AsyncClient(server.url, ADMIN_TOKEN) as client:
        await client.create_document(DOC)
        return [job["id"] for job in await client.enqueue_jobs(DOC, jobs)]


async def _states(server: LiveServer, ids: list[int]) -> dict[int, dict[str, Any]]:
    async with AsyncClient(server.url, ADMIN_TOKEN) as client:
        return {i: await client.get_job(DOC, i) for i in ids}


async def test_trio_worker_runs_handlers_retries_with_the_checkpoint(server: LiveServer) -> None:
    jobs = [{"queue": "mail" if i % 2 else "sms", "payload": i, "backoff": {"strategy": "none"}} for i in range(10)]
    ids = await _setup(server, jobs)
    seen: list[tuple[str, Any, int]] = []
    resumed: list[Any] = []
    async with AsyncClient(server.url, ADMIN_TOKEN) as client:
        worker: AsyncWorker

        async def mail(ctx: JobContext) -> dict[str, Any]:
            seen.append(("mail", ctx.payload, ctx.attempt))
            if ctx.payload == 1 and ctx.attempt == 1:
                ctx.checkpoint({"done": 3})
                raise RuntimeError("smtp down")
            if ctx.payload == 1:
                resumed.append(ctx.saved_checkpoint)
            return done(ctx)

        async def sms(ctx: JobContext) -> dict[str, Any]:
            seen.append(("sms", ctx.payload, ctx.attempt))
            return done(ctx)

        def done(ctx: JobContext) -> dict[str, Any]:
            if len(seen) == len(jobs) + 1:
                worker.stop()
            return {"handled": ctx.payload}

        worker = AsyncWorker(client, DOC, {"mail": mail, "sms": sms}, concurrency=3, wait_seconds=5)
        with trio.fail_after(60):
            await worker.run()
    states = await _states(server, ids)
    assert all(job["state"] == "completed" for job in states.values())
    assert [states[i]["result"] for i in ids] == [{"handled": n} for n in range(10)]
    failed = states[ids[1]]
    assert failed["attempts"] == 2 and failed["errors"][0]["error"] == "RuntimeError: smtp down"
    assert "Traceback" in failed["errors"][0]["backtrace"]
    assert resumed == [{"done": 3}]
    assert sorted((q, p) for q, p, _ in seen) == sorted([("mail" if i % 2 else "sms", i) for i in range(10)]
                                                         + [("mail", 1)])


async def test_stop_hands_back_a_job_that_outlives_the_grace(server: LiveServer) -> None:
    ids = await _setup(server, [{"queue": "slow", "payload": "x"}])
    started = trio.Event()
    async with AsyncClient(server.url, ADMIN_TOKEN) as client:

        async def slow(ctx: JobContext) -> None:
            ctx.checkpoint({"step": 1})
            started.set()
            await trio.sleep_forever()

        worker = AsyncWorker(client, DOC, {"slow": slow}, concurrency=2, grace_seconds=0, wait_seconds=30)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            await started.wait()
            worker.stop()  # also ends the other slot's waiting fetch at once
    job = (await _states(server, ids))[ids[0]]
    assert job["state"] == "retrying" and job["checkpoint"] == {"step": 1}
    assert job["errors"][-1]["error"] == HANDED_BACK


async def test_asyncio_worker(server: LiveServer) -> None:
    ids = await _setup(server, [{"queue": "a", "payload": i} for i in range(6)])

    async def main() -> int:
        async with AsyncClient(server.url, ADMIN_TOKEN) as client:
            count = 0
            worker: AsyncWorker

            async def handle(ctx: JobContext) -> int:
                nonlocal count
                count += 1
                if count == 6:
                    worker.stop()
                await asyncio.sleep(0)
                return int(ctx.payload) * 2

            worker = AsyncWorker(client, DOC, {"a": handle}, concurrency=2, wait_seconds=5)
            await worker.run()
            return count

    assert await trio.to_thread.run_sync(asyncio.run, main()) == 6
    states = await _states(server, ids)
    assert [states[i]["result"] for i in ids] == [0, 2, 4, 6, 8, 10]


async def test_threaded_worker(server: LiveServer) -> None:
    ids = await _setup(server, [{"queue": "t", "payload": i} for i in range(8)])
    lock = threading.Lock()
    handled: list[int] = []

    def run() -> None:
        with Client(server.url, ADMIN_TOKEN) as client:
            worker: Worker

            def handle(ctx: JobContext) -> str:
                ctx.progress({"pct": 100})
                with lock:
                    handled.append(ctx.payload)
                    if len(handled) == 8:
                        worker.stop()
                return f"ok {ctx.payload}"

            worker = Worker(client, DOC, {"t": handle}, concurrency=3, wait_seconds=1)
            worker.run()

    with trio.fail_after(60):
        await trio.to_thread.run_sync(run)
    states = await _states(server, ids)
    assert sorted(handled) == list(range(8))
    assert [states[i]["result"] for i in ids] == [f"ok {n}" for n in range(8)]
