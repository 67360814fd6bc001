"""Job queue benchmark: skald's job API against huey with its SQLite storage, in one run.

Each form runs ``--jobs`` jobs (default 3,000) through enqueue -> start -> completion with
``--workers`` workers (default 8) while a producer enqueues, and prints throughput (jobs/s,
first enqueue to last completion) and enqueue-to-start latency p50/p99:

- skald, **batch** form: the producer enqueues 100 jobs per request (``POST …/jobs/batch``); each
  worker fetches up to 10 jobs per request (``max_jobs``) and acks them in one request
  (``POST …/jobs/ack``). One durable commit per request, group-committed across workers.
- skald, **one request per call**: one enqueue, one fetch, one ack per job.
- huey 3.5 (``SqliteHuey``, WAL, its defaults otherwise): the producer calls the task; a
  ``huey_consumer``-style consumer process with 8 worker threads runs it; results are stored
  (as skald stores each ack's result).

Every skald request is a real HTTP request to ``skald serve`` from this process (trio + httpx,
one connection per worker); the load generator shares the machine with the servers, so the
figures are relative. Usage: ``python bench/jobs.py [--jobs 3000] [--workers 8]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

TOKEN = "skd_bench_admin_token_0123456789abcdefghijklmnop"
DB = "bench"
J = f"/api/v1/db/{DB}/jobs"
ENQUEUE_BATCH = 100
FETCH_BATCH = 10


def start_server(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    env = {**os.environ, "SKALD_ADMIN_TOKEN": TOKEN, "SKALD_LOG_LEVEL": "warning"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "skald", "serve", "--port", "0", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
    )
    assert proc.stdout is not None
    match = re.search(rb"listening on (http://\S+)", proc.stdout.readline())
    if not match:
        proc.kill()
        raise SystemExit("skald did not start")
    return proc, match[1].decode()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(name: str, jobs: int, seconds: float, latencies: list[float]) -> dict[str, float]:
    rate = jobs / seconds
    p50, p99 = percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000
    print(f"  {name:<34} {rate:8.0f} jobs/s   enqueue->start p50 {p50:7.1f} ms   p99 {p99:7.1f} ms", flush=True)
    return {"jobs_per_second": rate, "p50_ms": p50, "p99_ms": p99}


# ---- skald ----------------------------------------------------------------------------------------


async def skald_run(url: str, queue: str, jobs: int, workers: int, batch: bool) -> tuple[float, list[float]]:
    done = 0
    finished = trio.Event()
    headers = {"Authorization": f"Bearer {TOKEN}"}

    async def produce(client: httpx.AsyncClient) -> None:
        if batch:
            for first in range(0, jobs, ENQUEUE_BATCH):
                body = {"jobs": [{"queue": queue, "payload": {"n": n}} for n in range(first, first + ENQUEUE_BATCH)]}
                r = await client.post(J + "/batch", json=body)
                assert r.status_code == 201, r.text
        else:
            async def one_producer(start: int) -> None:
                for n in range(start, jobs, workers):
                    r = await client.post(J, json={"queue": queue, "payload": {"n": n}})
                    assert r.status_code == 201, r.text

            async with trio.open_nursery() as nursery:
                for start in range(workers):
                    nursery.start_soon(one_producer, start)

    async def work(name: str) -> None:
        nonlocal done
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
            while not finished.is_set():
                body: dict[str, Any] = {"queues": [queue], "worker_id": name, "wait_seconds": 1}
                if batch:
                    body["max_jobs"] = FETCH_BATCH
                r = await client.post(J + "/fetch", json=body)
                if r.status_code == 204:
                    continue
                got = r.json()["jobs"] if batch else [r.json()]
                if batch:
                    acks = [{"id": j["id"], "lease": j["lease"]["token"], "result": j["payload"]["n"]} for j in got]
                    answer = await client.post(J + "/ack", json={"jobs": acks})
                    assert answer.status_code == 200 and all(a["ok"] for a in answer.json()["jobs"]), answer.text
                else:
                    job = got[0]
                    answer = await client.post(f"{J}/{job['id']}/ack",
                                               json={"lease": job["lease"]["token"], "result": job["payload"]["n"]})
                    assert answer.status_code == 200, answer.text
                done += len(got)
                if done >= jobs:
                    finished.set()

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as producer:
        async with trio.open_nursery() as nursery:
            for n in range(workers):
                nursery.start_soon(work, f"{queue}-w{n}")
            await produce(producer)
            await finished.wait()
            elapsed = time.perf_counter() - started
            nursery.cancel_scope.cancel(reason="done")
        latencies: list[float] = []
        cursor = None
        while True:
            body = {"filter": {"queue": queue}, "limit": 1000, **({"cursor": cursor} if cursor else {})}
            page = (await producer.post(J + "/search", json=body)).json()
            for job in page["jobs"]:
                assert job["state"] == "completed"
                latencies.append((_ms(job["started_at"]) - _ms(job["created_at"])) / 1000)
            cursor = page["next_cursor"]
            if cursor is None:
                break
    assert len(latencies) == jobs
    return elapsed, latencies


def _ms(iso: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


async def skald_forms(jobs: int, workers: int) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(Path(tmp) / "data")
        try:
            async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
                assert (await client.put(f"/api/v1/db/{DB}")).status_code == 201
            results = {}
            for name, batch in (("skald batch (100/enqueue, 10/fetch+ack)", True),
                                ("skald one request per call", False)):
                elapsed, latencies = await skald_run(url, "b" if batch else "s", jobs, workers, batch)
                results[name] = report(name, jobs, elapsed, latencies)
            return results
        finally:
            proc.terminate()
            proc.wait()


# ---- huey -----------------------------------------------------------------------------------------

HUEY_APP = '''
import time
from huey import SqliteHuey
huey = SqliteHuey("bench", filename=FILENAME)

@huey.task()
def job(n, enqueued_at):
    return (enqueued_at, time.time())
'''


def huey_form(jobs: int, workers: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        filename = str(Path(tmp) / "huey.db")
        app = Path(tmp) / "huey_app.py"
        app.write_text(f"FILENAME = {filename!r}\n" + HUEY_APP)
        consumer = subprocess.Popen(
            [sys.executable, "-c", "import huey_app; from huey.consumer import Consumer;"
             f" Consumer(huey_app.huey, workers={workers}, worker_type='thread').run()"],
            cwd=tmp, env={**os.environ, "PYTHONPATH": tmp}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        sys.path.insert(0, tmp)
        try:
            import huey_app  # type: ignore[import-not-found]

            started = time.perf_counter()
            results = [huey_app.job(n, time.time()) for n in range(jobs)]
            values = []
            for result in results:
                value = result.get(blocking=True, timeout=120)
                values.append(value)
            elapsed = time.perf_counter() - started
        finally:
            sys.path.remove(tmp)
            consumer.terminate()
            consumer.wait()
        return report("huey 3.5 SqliteHuey, 8 threads", jobs, elapsed, [s - e for e, s in values])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    print(f"{args.jobs} jobs, {args.workers} workers, enqueue + start + completion (result stored)")
    figures = trio.run(skald_forms, args.jobs, args.workers)
    figures["huey"] = huey_form(args.jobs, args.workers)
    batch = figures["skald batch (100/enqueue, 10/fetch+ack)"]["jobs_per_second"]
    single = figures["skald one request per call"]["jobs_per_second"]
    print(f"  skald batch / huey: {batch / figures['huey']['jobs_per_second']:.2f}x;"
          f" one request per call / huey: {single / figures['huey']['jobs_per_second']:.2f}x")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
