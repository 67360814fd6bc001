"""The streaming forms of the job API over HTTP: ``POST …/jobs/stream`` (enqueue, one job per line)
and ``POST …/jobs/work`` (a worker's ack + fetch steps over one request)."""

from __future__ import annotations

import json
from typing import Any

import trio
from support.live import ADMIN_TOKEN, LiveServer
from support.ndjson import duplex_ndjson

DB = "streams"
J = f"/api/v1/db/{DB}/jobs"
NDJSON = {"Content-Type": "application/x-ndjson"}


def lines(*items: Any) -> bytes:
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


async def test_enqueue_stream_acknowledges_each_line_after_its_commit(server: LiveServer) -> None:
    async with server.client() as api:
        assert (await api.put(f"/api/v1/db/{DB}")).status_code == 201
        body = lines({"queue": "mail", "payload": {"n": 1}, "unique_key": "k"},
                     {"queue": "bad queue!", "payload": 2},
                     {"queue": "mail", "payload": {"n": 3}, "priority": "high"},
                     {"queue": "mail", "payload": {"n": 1}, "unique_key": "k"}) + b"\nnot json\n"
        r = await api.post(J + "/stream", content=body, headers=NDJSON)
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
        acks = [json.loads(line) for line in r.text.splitlines()]
        assert [a["line"] for a in acks] == [1, 2, 3, 4, 6]  # the blank line 5 has no acknowledgement
        assert acks[0]["state"] == "queued" and acks[0]["duplicate"] is False and acks[0]["queue"] == "mail"
        assert acks[1]["problem"]["code"] == "validation_failed" and acks[1]["problem"]["status"] == 400
        assert acks[3]["duplicate"] is True and acks[3]["id"] == acks[0]["id"]
        assert acks[4]["problem"]["code"] == "invalid_json"
        stored = (await api.get(f"{J}/{acks[2]['id']}")).json()  # acknowledged means stored
        assert stored["payload"] == {"n": 3} and stored["priority"] == "high"
        missing = await api.post("/api/v1/db/nope/jobs/stream", content=body, headers=NDJSON)
        assert missing.status_code == 404 and missing.json()["code"] == "document_not_found"

    mail_only = await server.mint_token(f"{DB}:jobs.enqueue:mail")
    async with server.client(mail_only) as producer:
        r = await producer.post(J + "/stream", content=lines({"queue": "mail"}, {"queue": "sms"}), headers=NDJSON)
        acks = [json.loads(line) for line in r.text.splitlines()]
        assert "id" in acks[0] and acks[1]["problem"]["code"] == "scope_denied"
    reader = await server.mint_token(f"{DB}:query.read")
    async with server.client(reader) as nobody:
        r = await nobody.post(J + "/stream", content=lines({"queue": "mail"}), headers=NDJSON)
        assert r.status_code == 403 and r.json()["code"] == "scope_denied"


async def test_enqueue_stream_lines_keep_their_order_when_they_share_commits(server: LiveServer) -> None:
    async with server.client() as api:
        assert (await api.put(f"/api/v1/db/{DB}")).status_code == 201
        count = 2500  # more than one op holds (1,000): lines read while an op waits join it
        body = lines(*({"queue": "bulk", "payload": n, "unique_key": f"k{n % 2000}"} for n in range(count)))
        r = await api.post(J + "/stream", content=body, headers=NDJSON)
        acks = [json.loads(line) for line in r.text.splitlines()]
        assert [a["line"] for a in acks] == list(range(1, count + 1))
        fresh = [a["id"] for a in acks[:2000]]
        assert fresh == sorted(fresh) and len(set(fresh)) == 2000 and not any(a["duplicate"] for a in acks[:2000])
        assert [a["id"] for a in acks[2000:]] == fresh[:500] and all(a["duplicate"] for a in acks[2000:])
        queues = (await api.get(J + "/queues")).json()["queues"]
        assert next(q for q in queues if q["name"] == "bulk")["counts"]["queued"] == 2000


async def test_work_stream_acks_and_fetches_in_one_step(server: LiveServer) -> None:
    async with server.client() as api:
        assert (await api.put(f"/api/v1/db/{DB}")).status_code == 201
        r = await api.post(J + "/batch", json={"jobs": [{"queue": "q", "payload": n} for n in range(3)]})
        ids = [j["id"] for j in r.json()["jobs"]]
        step = {"queues": ["q"], "worker_id": "w1", "lease_seconds": 60}
        with trio.fail_after(30):
            async with duplex_ndjson(server.url, J + "/work", ADMIN_TOKEN) as work:
                await work.send({**step, "max_jobs": 2})
                first = await work.receive()
                assert first["line"] == 1 and first["acks"] == []
                assert [j["id"] for j in first["jobs"]] == ids[:2]
                assert all(j["state"] == "running" and j["attempt"] == 1 for j in first["jobs"])

                done = [{"id": j["id"], "lease": j["lease"]["token"], "result": j["payload"]} for j in first["jobs"]]
                await work.send({**step, "max_jobs": 2, "ack": done})
                second = await work.receive()
                assert second["acks"] == [{"id": i, "ok": True, "state": "completed"} for i in ids[:2]]
                assert [j["id"] for j in second["jobs"]] == ids[2:]
                assert (await api.get(f"{J}/{ids[0]}")).json()["result"] == 0

                # a stale lease is refused for its own entry; nothing is ready, so the step waits...
                last = second["jobs"][0]
                await work.send({**step, "wait_seconds": 30, "max_jobs": 1,
                                 "ack": [done[0], {"id": last["id"], "lease": last["lease"]["token"]}]})
                await trio.testing.wait_all_tasks_blocked()
                late = await api.post(J, json={"queue": "q", "payload": "late"})  # ...until a commit wakes it
                third = await work.receive()
                assert third["acks"][0]["ok"] is False and third["acks"][0]["code"] == "job_lease_mismatch"
                assert third["acks"][1] == {"id": last["id"], "ok": True, "state": "completed"}
                assert [j["id"] for j in third["jobs"]] == [late.json()["id"]]

                # max_jobs 0: only ack (a worker stopping); a bad line is answered with its problem
                job = third["jobs"][0]
                await work.send({**step, "max_jobs": 0, "ack": [{"id": job["id"], "lease": job["lease"]["token"]}]},
                                {"worker_id": "w1"})
                assert (await work.receive()) == {"line": 4, "acks": [{"id": job["id"], "ok": True,
                                                                      "state": "completed"}], "jobs": []}
                assert (await work.receive())["problem"]["code"] == "validation_failed"
                await work.end()
                assert b'"line"' not in await work.rest()  # the response ends with the input
        states = {(await api.get(f"{J}/{i}")).json()["state"] for i in [*ids, late.json()["id"]]}
        assert states == {"completed"}

    other = await server.mint_token(f"{DB}:jobs.work:mail")
    async with duplex_ndjson(server.url, J + "/work", other) as work:
        await work.send({"queues": ["q"], "worker_id": "w2"})
        await work.end()
        assert (await work.receive())["problem"]["code"] == "scope_denied"


async def test_stream_lines_are_as_strict_as_json_bodies(server: LiveServer) -> None:
    """A lone surrogate ("\\ud800": Python's json takes it, UTF-8 cannot carry it to SQLite or back) is
    refused on its line as in a JSON body, and the stream goes on (it used to break off mid-answer)."""
    async with server.client() as api:
        assert (await api.put(f"/api/v1/db/{DB}")).status_code == 201
        assert (await api.post(J, json={"queue": "q", "payload": 1})).status_code == 201
        body = b'{"queues": ["q"], "worker_id": "w\\ud800"}\n{"queues": ["q"], "worker_id": "w1"}\n'
        r = await api.post(J + "/work", content=body, headers=NDJSON)
        assert r.status_code == 200
        refused, ok = [json.loads(text) for text in r.text.splitlines()]
        assert refused["problem"]["code"] == "invalid_json" and "surrogate" in refused["problem"]["detail"]
        assert ok["jobs"][0]["worker_id"] == "w1"
        r = await api.post(J + "/stream", content=b'{"queue": "q", "payload": NaN}\n', headers=NDJSON)
        assert json.loads(r.text)["problem"]["code"] == "invalid_json"
