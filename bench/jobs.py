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
STREAM_CHUNK = 100  # enqueue lines per chunk on the enqueue stream
STREAM_IN_FLIGHT = 1000  # unacknowledged enqueue lines on it


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


class Duplex:
    """One raw HTTP/1.1 request with a chunked NDJSON body, read while it is still being sent (httpx
    sends a whole body before reading the response): how a client uses ``…/jobs/stream`` and ``…/jobs/work``."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""
        self.head = False

    @classmethod
    async def open(cls, url: str, path: str) -> Duplex:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.send_all((f"POST {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {TOKEN}\r\n"
                               "Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n").encode())
        return cls(stream)

    async def send(self, lines: list[dict[str, Any]]) -> None:
        data = b"".join(json.dumps(line, separators=(",", ":")).encode() + b"\n" for line in lines)
        await self.stream.send_all(b"%x\r\n%s\r\n" % (len(data), data))

    async def receive(self) -> list[dict[str, Any]]:
        """The acknowledgement lines that have arrived (at least one)."""
        while True:
            if not self.head and b"\r\n\r\n" in self.buffer:
                status, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
                assert status.startswith(b"HTTP/1.1 200"), status[:300]
                self.head = True
            if self.head:
                *lines, self.buffer = self.buffer.split(b"\n")
                acks = [json.loads(line) for line in lines if line.startswith(b"{")]
                if acks:
                    return acks
            data = await self.stream.receive_some(1 << 16)
            assert data, "the server closed the stream"
            self.buffer += data


async def skald_run(url: str, queue: str, jobs: int, workers: int, form: str) -> tuple[float, list[float]]:
    done = 0
    finished = trio.Event()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    batch = form == "batch"

    def count(n: int) -> None:
        nonlocal done
        done += n
        if done >= jobs:
            finished.set()

    async def produce(client: httpx.AsyncClient) -> None:
        if form == "stream":
            duplex = await Duplex.open(url, J + "/stream")
            async with duplex.stream:
                sent = acked = 0
                room = trio.Event()

                async def read_acks() -> None:
                    nonlocal acked, room
                    while acked < jobs:
                        answers = await duplex.receive()
                        assert all("id" in a for a in answers), answers
                        acked += len(answers)
                        room.set()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(read_acks)
                    while sent < jobs:
                        while sent - acked >= STREAM_IN_FLIGHT:
                            room = trio.Event()
                            await room.wait()
                        chunk = min(STREAM_CHUNK, jobs - sent)
                        await duplex.send([{"queue": queue, "payload": {"n": n}} for n in range(sent, sent + chunk)])
                        sent += chunk
        elif batch:
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

    async def stream_work(name: str) -> None:
        duplex = await Duplex.open(url, J + "/work")
        async with duplex.stream:
            acks: list[dict[str, Any]] = []
            while not finished.is_set():
                await duplex.send([{"queues": [queue], "worker_id": name, "wait_seconds": 1,
                                    "max_jobs": FETCH_BATCH, "ack": acks}])
                (answer,) = await duplex.receive()
                assert all(a["ok"] for a in answer["acks"]), answer
                count(len(answer["acks"]))
                acks = [{"id": j["id"], "lease": j["lease"]["token"], "result": j["payload"]["n"]}
                        for j in answer["jobs"]]

    async def work(name: str) -> None:
        if form == "stream":
            await stream_work(name)
            return
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
                count(len(got))

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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat): a figure that survives load."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


FORMS = {"stream": "skald streaming (NDJSON enqueue, work stream)", "batch": "skald batch (100/enqueue, 10/fetch+ack)",
         "single": "skald one request per call"}


async def skald_form(url: str, pid: int, form: str, queue: str, jobs: int, workers: int) -> dict[str, float]:
    cpu = cpu_seconds(pid)
    elapsed, latencies = await skald_run(url, queue, jobs, workers, form)
    figures = report(FORMS[form], jobs, elapsed, latencies)
    figures["server_cpu_ms_per_job"] = (cpu_seconds(pid) - cpu) * 1000 / jobs
    print(f"  {'':<34} server CPU {figures['server_cpu_ms_per_job']:.3f} ms/job", flush=True)
    return figures


async def skald_paced(url: str, queue: str, rate: float, jobs: int, workers: int) -> dict[str, float]:
    """Enqueue-to-start latency below capacity: one job per enqueue-stream line every 1/rate s, workers
    waiting on the work stream (what a lightly loaded queue sees; the throughput runs measure a backlog)."""
    done = 0
    finished = trio.Event()

    async def worker(name: str) -> None:
        nonlocal done
        duplex = await Duplex.open(url, J + "/work")
        async with duplex.stream:
            acks: list[dict[str, Any]] = []
            while not finished.is_set():
                await duplex.send([{"queues": [queue], "worker_id": name, "wait_seconds": 1, "max_jobs": FETCH_BATCH,
                                    "ack": acks}])
                (answer,) = await duplex.receive()
                done += len(answer["acks"])
                if done >= jobs:
                    finished.set()
                acks = [{"id": j["id"], "lease": j["lease"]["token"]} for j in answer["jobs"]]

    producer = await Duplex.open(url, J + "/stream")
    async with producer.stream, trio.open_nursery() as nursery:
        for n in range(workers):
            nursery.start_soon(worker, f"{queue}-w{n}")
        await trio.sleep(0.2)  # the workers are waiting before the first job
        start = trio.current_time()
        for n in range(jobs):
            await trio.sleep_until(start + n / rate)
            await producer.send([{"queue": queue, "payload": {"n": n}}])
        await finished.wait()
        nursery.cancel_scope.cancel(reason="done")
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        found = (await client.post(J + "/search", json={"filter": {"queue": queue}, "limit": 1000})).json()["jobs"]
    latencies = [(_ms(j["started_at"]) - _ms(j["created_at"])) / 1000 for j in found]
    return report(f"skald streaming at {rate:.0f} jobs/s", jobs, jobs / rate, latencies)


# ---- huey -----------------------------------------------------------------------------------------

HUEY_APP = '''
import time
from huey import SqliteHuey
huey = SqliteHuey("bench", filename=FILENAME)

@huey.task()
def job(n, enqueued_at):
    return (enqueued_at, time.time())
'''


class Huey:
    """huey's consumer process (8 worker threads) on a fresh SqliteHuey file, and its producer here."""

    def __init__(self, tmp: str, workers: int) -> None:
        filename = str(Path(tmp) / "huey.db")
        app = Path(tmp) / "huey_app.py"
        app.write_text(f"FILENAME = {filename!r}\n" + HUEY_APP)
        self.consumer = subprocess.Popen(
            [sys.executable, "-c", "import huey_app; from huey.consumer import Consumer;"
             f" Consumer(huey_app.huey, workers={workers}, worker_type='thread').run()"],
            cwd=tmp, env={**os.environ, "PYTHONPATH": tmp}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        sys.path.insert(0, tmp)
        import huey_app  # type: ignore[import-not-found]

        sys.path.remove(tmp)
        self.app = huey_app

    def run(self, jobs: int, rate: float | None = None) -> dict[str, float]:
        """``jobs`` tasks enqueued at once (or at ``rate`` per second), every result awaited."""
        cpu, own = cpu_seconds(self.consumer.pid), time.process_time()
        started = time.perf_counter()
        results = []
        for n in range(jobs):
            if rate is not None:
                delay = started + n / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            results.append(self.app.job(n, time.time()))
        values = [result.get(blocking=True, timeout=120) for result in results]
        elapsed = time.perf_counter() - started
        name = "huey 3.5 SqliteHuey, 8 threads" + (f" at {rate:.0f} jobs/s" if rate else "")
        figures = report(name, jobs, elapsed, [s - e for e, s in values])
        if rate is None:
            # huey has no server: its producer (this process) writes SQLite itself, so both count
            figures["server_cpu_ms_per_job"] = (cpu_seconds(self.consumer.pid) - cpu + time.process_time() - own
                                                ) * 1000 / jobs
            print(f"  {'':<34} consumer + producer CPU {figures['server_cpu_ms_per_job']:.3f} ms/job", flush=True)
        return figures

    def close(self) -> None:
        self.consumer.terminate()
        self.consumer.wait()


async def run_all(args: argparse.Namespace, huey: Huey) -> dict[str, Any]:
    """Alternating turns (stream, batch, huey) per round, so load changes hit every form alike; then the
    one-request-per-call form once, and the latency below capacity."""
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(Path(tmp) / "data")
        try:
            async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
                assert (await client.put(f"/api/v1/db/{DB}")).status_code == 201
            rounds: list[dict[str, dict[str, float]]] = []
            for turn in range(args.rounds):
                print(f"round {turn + 1} (load {' '.join(f'{x:.2f}' for x in os.getloadavg())})", flush=True)
                figures = {form: await skald_form(url, proc.pid, form, f"{form}{turn}", args.jobs, args.workers)
                           for form in ("stream", "batch")}
                figures["huey"] = await trio.to_thread.run_sync(huey.run, args.jobs)
                rounds.append(figures)
            print(f"once (load {' '.join(f'{x:.2f}' for x in os.getloadavg())})", flush=True)
            single = await skald_form(url, proc.pid, "single", "single", args.single_jobs, args.workers)
            paced = await skald_paced(url, "paced", args.rate, args.paced_jobs, args.workers)
            paced_huey = await trio.to_thread.run_sync(huey.run, args.paced_jobs, args.rate)
            return {"rounds": rounds, "single": single, "paced": paced, "paced_huey": paced_huey}
        finally:
            proc.terminate()
            proc.wait()


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="alternating turns of stream, batch and huey")
    parser.add_argument("--single-jobs", type=int, default=1000, help="jobs for the one-request-per-call form")
    parser.add_argument("--rate", type=float, default=200.0, help="jobs/s for the latency-below-capacity runs")
    parser.add_argument("--paced-jobs", type=int, default=600)
    args = parser.parse_args()
    print(f"{args.jobs} jobs, {args.workers} workers, enqueue + start + completion (result stored);"
          f" {os.cpu_count()} cores, load {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        huey = Huey(tmp, args.workers)
        try:
            result = trio.run(run_all, args, huey)
        finally:
            huey.close()
    rounds = result["rounds"]
    summary: dict[str, Any] = {}
    print("summary (median over rounds; ratios taken within each round):")
    for form in ("stream", "batch"):
        ratio = median([r[form]["jobs_per_second"] / r["huey"]["jobs_per_second"] for r in rounds])
        cpu = median([r["huey"]["server_cpu_ms_per_job"] / r[form]["server_cpu_ms_per_job"] for r in rounds])
        rate = median([r[form]["jobs_per_second"] for r in rounds])
        summary[form] = {"jobs_per_second": rate, "vs_huey": ratio, "huey_cpu_over_skald_cpu": cpu}
        print(f"  {FORMS[form]:<44} {rate:7.0f} jobs/s  {ratio:.2f}x huey  (CPU per job: huey / skald {cpu:.2f}x)")
    huey_rate = median([r["huey"]["jobs_per_second"] for r in rounds])
    single = result["single"]["jobs_per_second"]
    print(f"  {'huey':<44} {huey_rate:7.0f} jobs/s")
    print(f"  {FORMS['single']:<44} {single:7.0f} jobs/s  {single / huey_rate:.2f}x huey (median huey rate)")
    print(f"  enqueue->start below capacity ({args.rate:.0f} jobs/s): skald p50 {result['paced']['p50_ms']:.1f} ms"
          f" p99 {result['paced']['p99_ms']:.1f} ms; huey p50 {result['paced_huey']['p50_ms']:.1f} ms"
          f" p99 {result['paced_huey']['p99_ms']:.1f} ms")
    print(f"  load at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(json.dumps({"summary": summary, **result}))


if __name__ == "__main__":
    main()
