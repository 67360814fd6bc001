"""Batch publish (issue 17): ``POST …/messages`` with ``{"messages": [...]}``, all or nothing.

Up to 1,000 messages in one request, one transaction: answered ``201 {"ids": [...]}`` in
order after the commit; one bad message, or one topic outside the token's scope, and
nothing is stored.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.live import ADMIN_TOKEN, LiveServer, make_settings
from support.threaded import serve_in_thread

M = "/api/v1/db/d/messages"


async def _stored(c: httpx.AsyncClient, since_id: int = 0) -> list[dict[str, Any]]:
    r = await c.get(M, params={"since_id": since_id, "limit": 1000})
    assert r.status_code == 200, r.text
    messages: list[dict[str, Any]] = r.json()["messages"]
    return messages


async def test_a_batch_is_answered_with_its_ids_in_order_and_stored_in_order(server: LiveServer) -> None:
    async with server.client() as c:
        assert (await c.put("/api/v1/db/d")).status_code == 201
        batch = [
            {"topic": "a/1", "payload": {"n": 1}},
            {"topic": "b", "payload_text": "zwei"},
            {"topic": "a/1", "payload_base64": base64.b64encode(b"\x00\x03").decode(), "content_type": "x/y"},
        ]
        r = await c.post(M, json={"messages": batch})
        assert r.status_code == 201, r.text
        ids = r.json()["ids"]
        assert len(ids) == 3 and ids == sorted(ids) and len(set(ids)) == 3
        stored = await _stored(c)
        assert [m["id"] for m in stored] == ids
        assert [m["topic"] for m in stored] == ["a/1", "b", "a/1"]
        assert stored[0]["payload"] == {"n": 1} and stored[1]["payload_text"] == "zwei"
        assert stored[2]["payload_base64"] == "AAM=" and stored[2]["content_type"] == "x/y"


async def test_one_bad_message_stores_nothing(server: LiveServer) -> None:
    async with server.client() as c:
        assert (await c.put("/api/v1/db/d")).status_code == 201
        batch = [{"topic": "ok", "payload": 1}, {"topic": "ok", "payload": 2}, {"topic": "bad/#", "payload": 3}]
        r = await c.post(M, json={"messages": batch})
        assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json", r.text
        assert r.json()["message_index"] == 2 and r.json()["code"] == "invalid_topic"
        for bad in ([], [{"topic": "x", "payload": 1}] * 1001, "x", [{"topic": "x"}]):
            r = await c.post(M, json={"messages": bad})
            assert r.status_code == 400, r.text
        r = await c.post(M, json={"messages": [{"topic": "x", "payload": 1}], "topic": "y"})
        assert r.status_code == 400 and r.json()["code"] == "validation_failed"
        assert await _stored(c) == []


async def test_one_topic_outside_the_tokens_scope_stores_nothing(server: LiveServer) -> None:
    async with server.client() as admin:
        assert (await admin.put("/api/v1/db/d")).status_code == 201
    token = await server.mint_token("d:pub.publish:sensors/")
    async with server.client(token) as c, server.client() as admin:
        batch = [{"topic": "sensors/1", "payload": 1}, {"topic": "alarms/1", "payload": 2}]
        r = await c.post(M, json={"messages": batch})
        assert r.status_code == 403 and r.json()["code"] == "scope_denied", r.text
        assert await _stored(admin) == []
        r = await c.post(M, json={"messages": batch[:1] * 2})
        assert r.status_code == 201 and len(r.json()["ids"]) == 2


async def test_dedupe_keys_inside_a_batch_and_across_batches(server: LiveServer) -> None:
    async with server.client() as c:
        assert (await c.put("/api/v1/db/d")).status_code == 201
        batch = [
            {"topic": "t", "payload": 1, "dedupe_key": "k1"},
            {"topic": "t", "payload": 2, "dedupe_key": "k1"},  # the first one's id
            {"topic": "t", "payload": 3},
        ]
        r = await c.post(M, json={"messages": batch})
        assert r.status_code == 201, r.text
        ids = r.json()["ids"]
        assert ids[0] == ids[1] != ids[2] and r.json()["deduplicated"] == [1]
        r = await c.post(M, json={"messages": batch[:2]})
        assert r.status_code == 200 and r.json() == {"ids": [ids[0], ids[0]], "deduplicated": [0, 1]}
        assert len(await _stored(c)) == 2


# ---- generated batches ----------------------------------------------------------------------------

SEGMENT = st.text(alphabet="abcxyz019_-", min_size=1, max_size=4)
TOPICS = st.lists(SEGMENT, min_size=1, max_size=3).map("/".join)
PAYLOADS = st.one_of(
    st.builds(lambda v: {"payload": v}, st.recursive(
        st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=8)),
    st.builds(lambda v: {"payload_text": v}, st.text(max_size=40)),
    st.builds(lambda v: {"payload_base64": base64.b64encode(v).decode()}, st.binary(max_size=40)),
)
MESSAGES = st.lists(st.builds(lambda topic, p: {"topic": topic, **p}, TOPICS, PAYLOADS), min_size=1, max_size=40)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    server_settings = make_settings(tmp_path_factory.mktemp("batch") / "data")
    with serve_in_thread(server_settings) as server, httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
    ) as c:
        assert c.put("/api/v1/db/d").status_code == 201
        yield c


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=MESSAGES)
def test_generated_batches_come_back_exactly_in_order(client: httpx.Client, batch: list[dict[str, Any]]) -> None:
    r = client.post(M, json={"messages": batch})
    assert r.status_code == 201, r.text
    ids = r.json()["ids"]
    assert len(ids) == len(batch) and ids == sorted(set(ids))
    stored = client.get(M, params={"since_id": ids[0] - 1, "limit": 1000}).json()["messages"]
    assert [m["id"] for m in stored] == ids  # nothing else in between: one transaction
    for sent, got in zip(batch, stored, strict=True):
        assert got["topic"] == sent["topic"]
        for key in ("payload", "payload_text", "payload_base64"):
            if key in sent:
                assert got[key] == sent[key]
