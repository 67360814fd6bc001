"""One request pipeline (issue 16.3): the relay (``/p/…``, ``/u/…``, ``/h``) and the stream API
(``/api/v1/db/{db}/streams/…``), served ahead of Quart, get the request id, the access log line, the request
metrics, the rate limit and the audit of denials exactly as Quart's routes do."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import structlog
import trio
import trio.testing
from support.live import LiveServer, make_settings, start_live_server

STREAM = "/api/v1/db/s/streams/queue/jobs/next"


@contextlib.contextmanager
def _captured_at_info() -> Iterator[list[MutableMapping[str, Any]]]:
    # The suite logs at warning (tests/conftest.py); access lines are info.
    wrapper = structlog.get_config()["wrapper_class"]
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    try:
        with structlog.testing.capture_logs() as logs:
            yield logs
    finally:
        structlog.configure(wrapper_class=wrapper)


def _access(logs: list[MutableMapping[str, Any]]) -> dict[str, dict[str, Any]]:
    return {entry["request_id"]: dict(entry) for entry in logs if entry.get("event") == "request"}


async def test_relay_and_stream_api_echo_the_request_id_and_log_one_line_each(server: LiveServer) -> None:
    async with server.client() as admin:
        assert (await admin.put("/api/v1/db/s")).status_code in (200, 201)
    with _captured_at_info() as logs:
        async with server.client(None) as anon:
            relay = await anon.delete("/p/chan", headers={"X-Request-Id": "relay-1"})
            api = await anon.get(STREAM, headers={"X-Request-Id": "api-1"})
            quart = await anon.get("/api/v1/db", headers={"X-Request-Id": "quart-1"})
            fresh = await anon.get("/h")
        # The line is written once the app returns, which may be a scheduler round after the client has the
        # last byte (hypercorn's end-of-message write is a checkpoint): let the server's task finish first.
        await trio.testing.wait_all_tasks_blocked()
    assert (relay.status_code, relay.headers["x-request-id"]) == (405, "relay-1")
    assert relay.headers["content-type"].startswith("text/plain")
    assert (api.status_code, api.headers["x-request-id"]) == (401, "api-1")
    assert api.headers["content-type"] == "application/problem+json"
    assert (quart.status_code, quart.headers["x-request-id"]) == (401, "quart-1")
    assert fresh.status_code == 200 and len(fresh.headers["x-request-id"]) == 32  # made up when none was sent
    lines = _access(logs)
    assert lines["relay-1"] | {"duration_ms": 0} == {
        "event": "request", "log_level": "info", "method": "DELETE", "route": "/p/<path>", "status": 405,
        "db_id": None, "request_id": "relay-1", "duration_ms": 0,
    }
    assert (lines["api-1"]["route"], lines["api-1"]["status"], lines["api-1"]["db_id"]) == (
        "/api/v1/db/<db_id>/streams/queue/<topic>/next", 401, "s")
    assert (lines["quart-1"]["route"], lines["quart-1"]["status"]) == ("/api/v1/db", 401)
    assert lines[fresh.headers["x-request-id"]]["route"] == "/h"
    assert all(entry["duration_ms"] >= 0 for entry in lines.values())


async def test_relay_and_stream_api_requests_are_counted(server: LiveServer) -> None:
    async with server.client(None) as anon:
        await anon.delete("/p/chan")
        await anon.get(STREAM)
    async with server.client() as admin:
        metrics = (await admin.get("/metrics")).text
    assert 'skald_http_requests_total{method="DELETE",route="/p/<path>",status="405"} 1.0' in metrics
    assert ('skald_http_requests_total{method="GET",route="/api/v1/db/<db_id>/streams/queue/<topic>/next",'
            'status="401"} 1.0') in metrics
    assert 'skald_http_request_duration_seconds_count{method="DELETE",route="/p/<path>"} 1.0' in metrics


async def test_the_public_relay_is_rate_limited_with_a_retry_after(data_dir: Path, nursery: trio.Nursery) -> None:
    server = await start_live_server(nursery, make_settings(data_dir, public_rate_per_second=0.01,
                                                            public_rate_burst=2))
    async with server.client(None) as anon:
        statuses = [(await anon.delete("/p/chan")).status_code for _ in range(3)]
        refused = await anon.delete("/p/chan")
    assert statuses == [405, 405, 429]
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert refused.headers["content-type"].startswith("text/plain") and "x-request-id" in refused.headers


async def test_a_wrong_hook_secret_is_an_audited_denial(server: LiveServer) -> None:
    async with server.client(None) as anon:
        minted = (await anon.get("/h")).json()
        r = await anon.post(f"/h/{minted['channel']}", params={"secret": "wrong"}, content=b"x")
    assert r.status_code == 401 and r.headers["content-type"].startswith("text/plain")
    async with server.client() as admin:
        events = (await admin.get("/api/v1/admin/audit", params={"event": "access.denied"})).json()["events"]
    assert [(e["detail"]["path"], e["detail"]["reason"]) for e in events] == [
        (f"/h/{minted['channel']}", "wrong or missing hook secret")
    ]


async def test_shutdown_refusal_is_the_pipelines_for_relay_and_quart_alike(server: LiveServer) -> None:
    async with server.client(None) as one, server.client(None) as other:
        # connections kept alive from before the signal: the server stops accepting new ones
        assert (await one.get("/healthz")).status_code == 200
        assert (await other.get("/healthz")).status_code == 200
        server.state.shutdown.begin()
        relay = await one.get("/p/late")
        quart = await other.get("/api/v1/db")
    assert (relay.status_code, relay.headers["connection"]) == (503, "close")
    assert relay.headers["content-type"].startswith("text/plain")
    assert (quart.status_code, quart.json()["code"], quart.headers["connection"]) == (503, "shutting_down", "close")
