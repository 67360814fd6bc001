"""The job queue over HTTP against a real server (docs/jobs.md).

Time (run_at, backoff, lease expiry) comes from a :class:`ManualJobClock` the tests
move by hand; fetches use ``wait_seconds: 0`` unless the test is about waiting.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.lowlevel
import trio.testing
from support.live import LiveServer, make_settings, start_live_server
from support.sse import Event, follow

from skald.jobs.clock import ManualJobClock

DOC = "work"
J = f"/api/v1/db/{DOC}/jobs"


@pytest.fixture
def clock(server: LiveServer) -> ManualJobClock:
    manual = ManualJobClock()
    server.state.job_queues.clock = manual
    return manual


@asynccontextmanager
async def _client(server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with server.client() as client:
        assert (await client.put(f"/api/v1/db/{DOC}")).status_code == 201
        yield client


async def enqueue(client: httpx.AsyncClient, **job: Any) -> dict[str, Any]:
    r = await client.post(J, json={"queue": "default", "payload": {}, **job})
    assert r.status_code in (200, 201), r.text
    body: dict[str, Any] = r.json()
    return body


async def fetch(client: httpx.AsyncClient, *queues: str, worker: str = "w1", **extra: Any) -> dict[str, Any] | None:
    body = {"queues": list(queues or ["default"]), "worker_id": worker, "wait_seconds": 0, **extra}
    r = await client.post(J + "/fetch", json=body)
    if r.status_code == 204:
        assert r.content == b""
        return None
    assert r.status_code == 200, r.text
    job: dict[str, Any] = r.json()
    return job


def problem(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == code


async def test_enqueue_fetch_ack(server: LiveServer, clock: ManualJobClock) -> None:
    async with _client(server) as client:
        created = await enqueue(client, payload={"to": "a@example.org"}, tags=["mail"])
        assert created["state"] == "queued" and created["duplicate"] is False and created["tags"] == ["mail"]
        job = await fetch(client)
        assert job is not None and job["id"] == created["id"] and job["attempt"] == 1
        assert job["state"] == "running" and job["payload"] == {"to": "a@example.org"}
        assert job["lease"]["token"] and job["lease"]["fence"] == 1
        assert await fetch(client) is None  # nothing else to run
        r = await client.post(f"{J}/{job['id']}/ack", json={"lease": job["lease"]["token"], "result": {"sent": 1}})
        assert r.status_code == 200 and r.json()["state"] == "completed" and r.json()["result"] == {"sent": 1}
        again = await client.post(f"{J}/{job['id']}/ack", json={"lease": job["lease"]["token"]})
        problem(again, 409, "job_lease_mismatch")  # never acknowledged twice
        got = (await client.get(f"{J}/{job['id']}")).json()
        assert got["state"] == "completed" and got["errors"] == [] and got["completed_at"]


async def test_fail_backs_off_then_dies_keeping_every_error(server: LiveServer, clock: ManualJobClock) -> None:
    async with _client(server) as client:
        backoff = {"strategy": "exponential", "base_seconds": 10, "max_seconds": 1000}
        created = await enqueue(client, max_attempts=3, backoff=backoff)
        for attempt, delay in ((1, 10), (2, 20), (3, None)):
            job = await fetch(client)
            assert job is not None and job["attempt"] == attempt
            r = await client.post(f"{J}/{created['id']}/fail",
                                  json={"lease": job["lease"]["token"], "error": f"boom {attempt}",
                                        "backtrace": "Traceback ..."})
            assert r.status_code == 200, r.text
            if delay is None:
                assert r.json()["state"] == "dead"
                break
            assert r.json()["state"] == "retrying"
            clock.advance(delay - 1)
            assert await fetch(client) is None  # still backing off
            clock.advance(1)
        got = (await client.get(f"{J}/{created['id']}")).json()
        assert got["state"] == "dead" and got["attempts"] == 3
        assert [e["error"] for e in got["errors"]] == ["boom 1", "boom 2", "boom 3"]
        assert [e["attempt"] for e in got["errors"]] == [1, 2, 3]
        assert await fetch(client) is None
        retried = await client.post(f"{J}/{created['id']}/retry")
        assert retried.status_code == 200 and retried.json()["state"] == "queued"
        assert (await fetch(client)) is not None


async def test_priority_then_oldest_run_at(server: LiveServer, clock: ManualJobClock) -> None:
    async with _client(server) as client:
        normal = await enqueue(client, payload="n")
        clock.advance(1)
        high = await enqueue(client, payload="h", priority="high")
        clock.advance(1)
        critical = await enqueue(client, payload="c", priority="critical")
        later_high = await enqueue(client, payload="h2", priority="high")
        order = [(await fetch(client)) for _ in range(4)]
        assert [j["id"] for j in order if j] == [critical["id"], high["id"], later_high["id"], normal["id"]]


async def test_run_at_in_the_future_waits(server: LiveServer, clock: ManualJobClock) -> None:
    async with _client(server) as client:
        await enqueue(client, run_at="2023-11-14T22:14:00Z")  # the manual clock starts at 22:13:20
        assert await fetch(client) is None
        clock.advance(40)
        assert await fetch(client) is not None


async def test_unique_keys(server: LiveServer, clock: ManualJobClock) -> None:
    async with _client(server) as client:
        first = await client.post(J, json={"queue": "q", "unique_key": "user-7", "unique_for_seconds": 60})
        assert first.status_code == 201
        dup = await client.post(J, json={"queue": "q", "unique_key": "user-7"})
        assert dup.status_code == 200 and dup.json()["duplicate"] is True and dup.json()["id"] == first.json()["id"]
        other_queue = await client.post(J, json={"queue": "q2", "unique_key": "user-7"})
        assert other_queue.status_code == 201
        job = await fetch(client, "q")
        assert job is not None
        await client.post(f"{J}/{job['id']}/ack", json={"lease": job["lease"]["token"]})
        # completed, but still inside unique_for_seconds
        assert (await client.post(J, json={"queue": "q", "unique_key": "user-7"})).status_code == 200
        clock.advance(61)
        fresh = await client.post(J, json={"queue": "q", "unique_key": "user-7"})
        assert fresh.status_code == 201 and fresh.json()["id"] != first.json()["id"]


async def test_pause_and_resume_wakes_a_waiting_fetch(server: LiveServer, clock: ManualJobClock) -> None:
    async with _client(server) as client:
        assert (await client.post(J + "/queues/default/pause")).json()["paused"] is True
        await enqueue(client)
        assert await fetch(client) is None
        got: list[dict[str, Any] | None] = []
        async with trio.open_nursery() as nursery:

            async def waiting() -> None:
                got.append(await fetch(client, wait_seconds=30))

            nursery.start_soon(waiting)
            await trio.testing.wait_all_tasks_blocked()
            r = await client.post(J + "/queues/default/resume")
            assert r.status_code == 200 and r.json()["paused"] is False
        assert got and got[0] is not None and got[0]["state"] == "running"


async def test_waiting_fetch_is_woken_by_an_enqueue(server: LiveServer, clock: ManualJobClock) -> None:
    async with _client(server) as client:
        got: list[dict[str, Any] | None] = []
        async with trio.open_nursery() as nursery:

            async def waiting() -> None:
                got.append(await fetch(client, "mail", wait_seconds=60))

            nursery.start_soon(waiting)
            await trio.testing.wait_all_tasks_blocked()
            await enqueue(client, queue="other")  # a commit for another queue: keeps waiting
            await trio.testing.wait_all_tasks_blocked()
            assert got == []
            created = await enqueue(client, queue="mail")
        assert got[0] is not None and got[0]["id"] == created["id"]


async def test_concurrency_limit_with_many_workers(server: LiveServer, clock: ManualJobClock) -> None:
    limit, workers, jobs = 2, 6, 12
    async with _client(server) as client:
        assert (await client.put(J + "/queues/limited", json={"concurrency": limit})).status_code == 200
        r = await client.post(J + "/batch", json={"jobs": [{"queue": "limited", "payload": i} for i in range(jobs)]})
        assert r.status_code == 201 and len(r.json()["jobs"]) == jobs
        running: set[int] = set()
        most = 0
        done: list[int] = []

        async def worker(name: str) -> None:
            nonlocal most
            while len(done) < jobs:
                job = await fetch(client, "limited", worker=name, wait_seconds=5)
                if job is None:
                    continue
                running.add(job["id"])
                queues = (await client.get(J + "/queues")).json()["queues"]
                counted = next(q for q in queues if q["name"] == "limited")["counts"]["running"]
                most = max(most, counted, len(running))
                await trio.lowlevel.checkpoint()
                running.discard(job["id"])
                r = await client.post(f"{J}/{job['id']}/ack", json={"lease": job["lease"]["token"]})
                assert r.status_code == 200, r.text
                done.append(job["id"])

        async with trio.open_nursery() as nursery:
            for n in range(workers):
                nursery.start_soon(worker, f"w{n}")
        assert sorted(done) == sorted(j["id"] for j in r.json()["jobs"])
        assert 1 <= most <= limit


async def test_lease_expiry_reclaims_and_fences_the_old_lease(server: LiveServer, clock: ManualJobClock) -> None:
    async with _client(server) as client:
        created = await enqueue(client, max_attempts=5, backoff={"strategy": "none"})
        first = await fetch(client, worker="slow", lease_seconds=10)
        assert first is not None
        clock.advance(11)
        second = await fetch(client, worker="fast")
        assert second is not None and second["id"] == created["id"] and second["attempt"] == 2
        assert second["lease"]["fence"] > first["lease"]["fence"]
        stale = await client.post(f"{J}/{created['id']}/ack", json={"lease": first["lease"]["token"]})
        problem(stale, 409, "job_lease_mismatch")
        assert stale.json()["reason"] == "stale"
        foreign = await client.post(f"{J}/{created['id']}/ack", json={"lease": "garbage"})
        problem(foreign, 409, "job_lease_mismatch")
        ok = await client.post(f"{J}/{created['id']}/ack", json={"lease": second["lease"]["token"]})
        assert ok.status_code == 200
        errors = (await client.get(f"{J}/{created['id']}")).json()["errors"]
        assert len(errors) == 1 and "lease expired" in errors[0]["error"] and errors[0]["attempt"] == 1


async def test_heartbeat_extends_the_lease_and_carries_cancel(server: LiveServer, clock: ManualJobClock) -> None:
    async with _client(server) as client:
        created = await enqueue(client)
        job = await fetch(client, lease_seconds=10)
        assert job is not None
        beat = {"worker_id": "w1", "lease_seconds": 10,
                "jobs": [{"id": job["id"], "lease": job["lease"]["token"], "progress": {"pct": 50}}]}
        clock.advance(8)
        r = await client.post(J + "/heartbeat", json=beat)
        assert r.status_code == 200 and r.json()["jobs"][0]["ok"] is True and r.json()["jobs"][0]["cancel"] is False
        clock.advance(8)  # 16 s after the fetch: alive only thanks to the heartbeat
        assert (await client.get(f"{J}/{job['id']}")).json()["progress"] == {"pct": 50}
        cancel = await client.post(f"{J}/{created['id']}/cancel")
        assert cancel.status_code == 200 and cancel.json()["state"] == "running"
        assert cancel.json()["cancel_requested"] is True
        r = await client.post(J + "/heartbeat", json=beat)
        assert r.json()["jobs"][0]["cancel"] is True
        r = await client.post(f"{J}/{job['id']}/fail", json={"lease": job["lease"]["token"], "error": "cancelled"})
        assert r.json()["state"] == "cancelled"
        assert await fetch(client) is None
        bad = await client.post(J + "/heartbeat", json=beat)
        assert bad.json()["jobs"][0] == {**bad.json()["jobs"][0], "ok": False, "code": "job_lease_mismatch"}


async def test_checkpoint_survives_fail_and_refetch(server: LiveServer, clock: ManualJobClock) -> None:
    async with _client(server) as client:
        await enqueue(client, backoff={"strategy": "none"})
        job = await fetch(client)
        assert job is not None and job["checkpoint"] is None
        beat = {"worker_id": "w1", "jobs": [{"id": job["id"], "lease": job["lease"]["token"],
                                             "checkpoint": {"offset": 400}}]}
        assert (await client.post(J + "/heartbeat", json=beat)).status_code == 200
        await client.post(f"{J}/{job['id']}/fail", json={"lease": job["lease"]["token"], "error": "disk full"})
        again = await fetch(client)
        assert again is not None and again["attempt"] == 2 and again["checkpoint"] == {"offset": 400}


async def test_move_delete_and_queue_admin(server: LiveServer, clock: ManualJobClock) -> None:
    async with _client(server) as client:
        a = await enqueue(client, queue="a")
        moved = await client.post(f"{J}/{a['id']}/move", json={"queue": "b"})
        assert moved.status_code == 200 and moved.json()["queue"] == "b"
        assert await fetch(client, "a") is None
        for _ in range(3):
            await enqueue(client, queue="b")
        queues = {q["name"]: q for q in (await client.get(J + "/queues")).json()["queues"]}
        assert queues["b"]["counts"]["queued"] == 4 and "a" not in queues
        running = await fetch(client, "b")
        assert running is not None
        problem(await client.delete(J + "/queues/b"), 409, "queue_busy")
        drained = await client.post(J + "/queues/b/drain")
        assert drained.json() == {"queue": "b", "deleted": 3}
        await client.post(f"{J}/{running['id']}/ack", json={"lease": running["lease"]["token"]})
        assert (await client.delete(J + "/queues/b")).status_code == 204
        problem(await client.delete(J + "/queues/b"), 404, "queue_not_found")
        gone = await enqueue(client, queue="c")
        assert (await client.delete(f"{J}/{gone['id']}")).status_code == 204
        problem(await client.get(f"{J}/{gone['id']}"), 404, "job_not_found")
        problem(await client.post(J, json={"queue": "bad/name"}), 400, "validation_failed")
        problem(await client.post(J, json={"queue": "q", "priority": "urgent"}), 400, "validation_failed")
        r = await client.post(J + "/batch", json={"jobs": [{"queue": "ok"}, {"queue": ""}]})
        problem(r, 400, "validation_failed")
        assert all(q["name"] != "ok" for q in (await client.get(J + "/queues")).json()["queues"])  # none stored


async def test_search_filters_pagination_and_bulk(server: LiveServer, clock: ManualJobClock) -> None:
    async with _client(server) as client:
        jobs = [{"queue": "s", "payload": {"n": i, "kind": "even" if i % 2 == 0 else "odd"},
                 "tags": ["t"] if i < 5 else [], "priority": "high" if i == 3 else "normal",
                 "max_attempts": 1 if i == 3 else 5} for i in range(12)]
        created = (await client.post(J + "/batch", json={"jobs": jobs})).json()["jobs"]
        failing = await fetch(client, "s")
        assert failing is not None and failing["id"] == created[3]["id"]  # the high one
        await client.post(f"{J}/{failing['id']}/fail", json={"lease": failing["lease"]["token"], "error": "E42 x"})

        async def search(**body: Any) -> dict[str, Any]:
            r = await client.post(J + "/search", json=body)
            assert r.status_code == 200, r.text
            result: dict[str, Any] = r.json()
            return result

        assert len((await search(filter={"tags": ["t"]}))["jobs"]) == 5
        assert len((await search(filter={"payload_contains": {"kind": "even"}}))["jobs"]) == 6
        assert len((await search(filter={"payload_contains": '"kind":"odd"'}))["jobs"]) == 6
        assert [j["id"] for j in (await search(filter={"error_contains": "E42"}))["jobs"]] == [failing["id"]]
        assert [j["id"] for j in (await search(filter={"has_errors": True}))["jobs"]] == [failing["id"]]
        assert len((await search(filter={"state": ["queued"], "attempts_max": 0}))["jobs"]) == 11
        assert (await search(filter={"priority": "high"}))["jobs"][0]["id"] == failing["id"]
        seen: list[int] = []
        cursor = None
        while True:
            page = await search(filter={"queue": "s"}, sort="id", order="desc", limit=5,
                                **({"cursor": cursor} if cursor else {}))
            seen += [j["id"] for j in page["jobs"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == sorted((j["id"] for j in created), reverse=True)
        problem(await client.post(J + "/search", json={"cursor": "nonsense"}), 400, "validation_failed")
        problem(await client.post(J + "/search", json={"filter": {"colour": "red"}}), 400, "validation_failed")

        r = await client.post(J + "/bulk", json={"action": "retry", "filter": {"state": "dead"}})
        assert r.json() == {"action": "retry", "affected": 1}
        r = await client.post(J + "/bulk", json={"action": "move", "ids": [c["id"] for c in created[:4]],
                                                 "queue": "elsewhere"})
        assert r.json()["affected"] == 4
        r = await client.post(J + "/bulk", json={"action": "priority", "filter": {"queue": "elsewhere"},
                                                 "priority": "critical"})
        assert r.json()["affected"] == 4
        r = await client.post(J + "/bulk", json={"action": "cancel", "filter": {"tags": ["t"], "queue": "s"}})
        assert r.json()["affected"] == 1  # created[4]: the other tagged ones moved
        r = await client.post(J + "/bulk", json={"action": "delete", "filter": {"queue": "s", "state": "queued"}})
        assert r.json()["affected"] == 7
        queues = {q["name"]: q["counts"] for q in (await client.get(J + "/queues")).json()["queues"]}
        assert queues["elsewhere"]["queued"] == 4 and queues["s"]["cancelled"] == 1 and queues["s"]["queued"] == 0


async def test_workers_and_events_stream(server: LiveServer, clock: ManualJobClock) -> None:
    async with _client(server) as client:
        created = await enqueue(client)
        job = await fetch(client, worker="alpha")
        assert job is not None
        workers = (await client.get(J + "/workers")).json()["workers"]
        assert [(w["worker_id"], w["running"]) for w in workers] == [("alpha", 1)]
        await client.post(f"{J}/{job['id']}/ack", json={"lease": job["lease"]["token"]})
        def jobs_seen(n: int) -> Callable[[list[Event]], bool]:
            return lambda events: len([e for e in events if e[0] == "job"]) >= n

        events = [e for e in await follow(client, J + "/events", jobs_seen(3), params={"since": 0}) if e[0] == "job"]
        states = [(e[2]["job_id"], e[2]["state"]) for e in events]
        assert states == [(created["id"], "queued"), (created["id"], "running"), (created["id"], "completed")]
        assert [int(e[1]) for e in events] == [e[2]["event_id"] for e in events]
        resumed = await follow(client, J + "/events", jobs_seen(1), headers={"Last-Event-ID": events[1][1]})
        assert [e[2]["state"] for e in resumed if e[0] == "job"] == ["completed"]


async def test_metrics_count_jobs_by_queue_and_state(server: LiveServer, clock: ManualJobClock) -> None:
    async with _client(server) as client:
        await enqueue(client, queue="m")
        await enqueue(client, queue="m")
        job = await fetch(client, "m")
        assert job is not None
        await client.post(f"{J}/{job['id']}/ack", json={"lease": job["lease"]["token"]})
        text = (await client.get("/metrics")).text
        assert f'skald_queue_jobs{{db="{DOC}",queue="m",state="queued"}} 1.0' in text
        assert f'skald_queue_jobs{{db="{DOC}",queue="m",state="completed"}} 1.0' in text
        assert 'skald_queue_enqueued_total{queue="m"} 2.0' in text
        assert 'skald_queue_finished_total{outcome="completed",queue="m"} 1.0' in text
        assert "skald_queue_wait_seconds_count 1.0" in text


async def test_fetch_several_and_ack_them_in_one_request(server: LiveServer, clock: ManualJobClock) -> None:
    async with _client(server) as client:
        assert (await client.put(J + "/queues/few", json={"concurrency": 3})).status_code == 200
        await client.post(J + "/batch", json={"jobs": [{"queue": "few", "payload": i} for i in range(5)]})
        r = await client.post(J + "/fetch", json={"queues": ["few"], "worker_id": "w", "max_jobs": 10})
        jobs = r.json()["jobs"]
        assert r.status_code == 200 and [j["payload"] for j in jobs] == [0, 1, 2]  # the concurrency limit holds
        acks = [{"id": j["id"], "lease": j["lease"]["token"], "result": j["payload"]} for j in jobs]
        acks[1]["lease"] = jobs[0]["lease"]["token"]  # a foreign lease fails alone
        answer = (await client.post(J + "/ack", json={"jobs": acks})).json()["jobs"]
        assert [a["ok"] for a in answer] == [True, False, True] and answer[1]["code"] == "job_lease_mismatch"
        assert (await client.get(f"{J}/{jobs[1]['id']}")).json()["state"] == "running"
        r = await client.post(J + "/fetch", json={"queues": ["few"], "worker_id": "w", "max_jobs": 10})
        assert [j["payload"] for j in r.json()["jobs"]] == [3, 4]


async def test_a_waiting_fetch_answers_204_when_the_server_stops(nursery: trio.Nursery, tmp_path: Path) -> None:
    live = await start_live_server(nursery, make_settings(tmp_path / "data"), graceful_timeout=30)
    async with _client(live) as client:
        got: list[int] = []
        async with trio.open_nursery() as inner:

            async def waiting() -> None:
                r = await client.post(J + "/fetch", json={"queues": ["q"], "worker_id": "w", "wait_seconds": 60})
                got.append(r.status_code)

            inner.start_soon(waiting)
            await trio.testing.wait_all_tasks_blocked()
            inner.start_soon(live.stop)
        assert got == [204]  # answered, not cut off at the end of the grace period


async def test_a_scope_limited_to_queue_prefixes_acts_only_on_its_own_queues(
    server: LiveServer, clock: ManualJobClock
) -> None:
    async with _client(server) as admin:
        mail = await enqueue(admin, queue="mail", payload={"to": "a"})
        sms = await enqueue(admin, queue="sms", payload={"to": "b"})
        other = [await enqueue(admin, queue="sms", payload={"n": n}) for n in range(3)]
    mail_admin = await server.mint_token(f"{DOC}:jobs.admin:mail")
    async with server.client(mail_admin) as client:
        assert (await client.get(f"{J}/{mail['id']}")).status_code == 200
        problem(await client.get(f"{J}/{sms['id']}"), 403, "scope_denied")
        for action in ("retry", "cancel"):
            problem(await client.post(f"{J}/{sms['id']}/{action}"), 403, "scope_denied")
        problem(await client.delete(f"{J}/{sms['id']}"), 403, "scope_denied")
        problem(await client.post(f"{J}/{sms['id']}/move", json={"queue": "mail"}), 403, "scope_denied")
        problem(await client.post(f"{J}/{mail['id']}/move", json={"queue": "sms"}), 403, "scope_denied")
        assert (await client.get(f"{J}/{9_999}")).status_code == 404
        assert [q["name"] for q in (await client.get(f"{J}/queues")).json()["queues"]] == ["mail"]
        found = (await client.post(f"{J}/search", json={})).json()["jobs"]
        assert [j["id"] for j in found] == [mail["id"]]
        problem(await client.post(f"{J}/bulk", json={"action": "move", "filter": {}, "queue": "sms"}),
                403, "scope_denied")
        r = await client.post(f"{J}/bulk", json={"action": "delete", "filter": {}})
        assert r.json()["affected"] == 1
        problem(await client.get(f"{J}/workers"), 403, "scope_denied")
        problem(await client.get(f"{J}/events"), 403, "scope_denied")
    async with server.client() as admin:  # the other queue's jobs are untouched
        for job in (sms, *other):
            assert (await admin.get(f"{J}/{job['id']}")).json()["state"] == "queued"
