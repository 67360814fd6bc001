"""Bad input is a 4xx problem+json with a stable code, never a 500 (issue 15, item 4).

Each test here is one reproduced finding, against a real server. The
generated inputs over every route are in ``test_input_properties.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from support.live import LiveServer

from skald.http.json_body import MAX_JSON_DEPTH

DB = "/api/v1/db/bad"
JSON = {"Content-Type": "application/json"}
TOO_BIG = "99999999999999999999"  # > 2**63 - 1: SQLite cannot bind it


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    assert body["status"] == status
    assert body["type"].endswith("/" + code)
    assert body["title"] and body["detail"]
    return body


async def stream_head(client: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """The response to a streaming route: its body only when it is an error (a stream would not end)."""
    async with client.stream(method, path, **kwargs) as response:
        if response.status_code >= 400:
            await response.aread()
    return response


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.fixture
async def client(server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with server.client() as client:
        assert (await client.put(DB)).status_code == 201
        yield client


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/query", b'{"sql": "SELECT \xff"}'),
        ("/query", b'{"sql": "SELECT 1", "args": ["\xc3\x28"]}'),
        ("/query/batch", b'{"statements": [{"sql": "SELECT \xff"}]}'),
    ],
)
async def test_invalid_utf8_body_is_invalid_json(client: httpx.AsyncClient, path: str, body: bytes) -> None:
    assert_problem(await client.post(DB + path, content=body, headers=JSON), 400, "invalid_json")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/query", rb'{"sql": "SELECT ?", "args": ["\ud800"]}'),
        ("/query", rb'{"sql": "SELECT 1 -- \udfff"}'),
        ("/query/batch", rb'{"statements": [{"sql": "SELECT ?", "args": ["a\udc00b"]}]}'),
        ("/messages", rb'{"topic": "t", "payload": {"\ud800": 1}}'),
    ],
)
async def test_lone_surrogate_is_invalid_json(client: httpx.AsyncClient, path: str, body: bytes) -> None:
    assert_problem(await client.post(DB + path, content=body, headers=JSON), 400, "invalid_json")


async def test_escaped_surrogate_pair_is_text(client: httpx.AsyncClient) -> None:
    body = rb'{"sql": "SELECT ?", "args": ["\ud83d\ude00"]}'
    response = await client.post(DB + "/query", content=body, headers=JSON)
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == [["\U0001f600"]]


@pytest.mark.parametrize(
    ("method", "path", "prefix", "suffix"),
    [
        ("POST", DB + "/query", b'{"sql": "SELECT 1", "args": ', b"}"),
        ("POST", DB + "/messages", b'{"topic": "t", "payload": ', b"}"),
        ("POST", "/api/v1/admin/tokens", b'{"scopes": ', b"}"),
        ("PUT", DB + "/messages/retention", b"", b""),
    ],
)
async def test_deep_nesting_is_invalid_json(
    client: httpx.AsyncClient, method: str, path: str, prefix: bytes, suffix: bytes
) -> None:
    for depth in (MAX_JSON_DEPTH + 1, 10_000):
        response = await client.request(method, path, content=prefix + nested(depth) + suffix, headers=JSON)
        body = assert_problem(response, 400, "invalid_json")
        assert str(MAX_JSON_DEPTH) in body["detail"]


async def test_nesting_at_the_limit_is_accepted(client: httpx.AsyncClient) -> None:
    payload = nested(MAX_JSON_DEPTH - 1)  # inside the body object: the limit exactly
    response = await client.post(DB + "/messages", content=b'{"topic": "t", "payload": ' + payload + b"}",
                                 headers=JSON)
    assert response.status_code == 201, response.text


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
async def test_non_finite_numbers_are_invalid_json(client: httpx.AsyncClient, number: bytes) -> None:
    response = await client.put(DB + "/messages/retention", content=b'{"max_age_seconds": ' + number + b"}",
                                headers=JSON)
    assert_problem(response, 400, "invalid_json")


@pytest.mark.parametrize(
    ("path", "name"),
    [
        (DB + "/messages", "since_id"),
        ("/api/v1/admin/audit", "before_id"),
        (DB + "/changes", "since"),
        (DB + "/messages", "limit"),
    ],
)
async def test_integer_parameters_beyond_int64_are_refused(client: httpx.AsyncClient, path: str, name: str) -> None:
    for value in (TOO_BIG, str(2**63), "-" + TOO_BIG, "1" * 5000):
        body = assert_problem(await client.get(path, params={name: value}), 400, "validation_failed")
        assert name in body["detail"]


@pytest.mark.parametrize("value", ["1_0", " 1", "+1", "\u0661", "1.0", "0x10"])
async def test_integer_parameters_are_plain_decimal(client: httpx.AsyncClient, value: str) -> None:
    assert_problem(await client.get(DB + "/messages", params={"since_id": value}), 400, "validation_failed")


async def test_int64_max_cursor_is_served(client: httpx.AsyncClient) -> None:
    response = await client.get(DB + "/messages", params={"since_id": str(2**63 - 1)})
    assert response.status_code == 200, response.text
    assert response.json()["messages"] == []


@pytest.mark.parametrize(
    ("params", "headers"),
    [({"since_id": TOO_BIG}, {}), ({}, {"Last-Event-ID": TOO_BIG}), ({}, {"Last-Event-ID": "x1"})],
)
async def test_stream_cursor_beyond_int64_is_refused_before_the_stream(
    client: httpx.AsyncClient, params: dict[str, str], headers: dict[str, str]
) -> None:
    # Before: 200 and event-stream headers, then the connection died mid-stream with a traceback.
    response = await stream_head(client, "GET", DB + "/events/stream", params=params, headers=headers)
    assert_problem(response, 400, "validation_failed")


async def test_change_stream_cursor_is_validated(client: httpx.AsyncClient) -> None:
    for value in (TOO_BIG.encode(), "\u00b2".encode("latin-1")):  # "²" passes str.isdigit(), not int()
        headers = {"Last-Event-ID": value}
        response = await stream_head(client, "GET", DB + "/changes/stream", headers=headers)
        assert_problem(response, 400, "validation_failed")


@pytest.mark.parametrize("value", ["0", "-1", "0.05", "nan", "inf", "1e400", "3601", "abc"])
async def test_heartbeat_outside_the_documented_bounds_is_refused(client: httpx.AsyncClient, value: str) -> None:
    response = await stream_head(client, "GET", DB + "/events/stream", params={"heartbeat": value})
    body = assert_problem(response, 400, "validation_failed")
    assert (body["minimum"], body["maximum"]) == (0.1, 3600)


async def test_watch_heartbeat_has_the_same_floor(client: httpx.AsyncClient) -> None:
    body = {"sql": "SELECT 1", "options": {"heartbeat_seconds": 0.01}}
    response = await stream_head(client, "POST", DB + "/query/watch", json=body)
    assert_problem(response, 400, "validation_failed")


@pytest.mark.parametrize("topic", ["a\x00b", "\x00", "a/\x1f", "x\x7f", "caf\u0085"])
async def test_topic_with_control_characters_is_refused_and_not_stored(
    client: httpx.AsyncClient, topic: str
) -> None:
    response = await client.post(DB + "/messages", json={"topic": topic, "payload": 1})
    assert_problem(response, 400, "invalid_topic")
    assert (await client.get(DB + "/messages")).json()["messages"] == []
    assert_problem(await client.get(DB + "/messages", params={"topic": topic}), 400, "invalid_topic")


STREAMS = DB + "/streams"


@pytest.mark.parametrize(
    ("path", "allow"),
    [
        ("/queue/t/next", "GET, OPTIONS, POST, PUT"),
        ("/queue/t", "OPTIONS, POST, PUT"),  # GET is only for .../next
        ("/req/p", "OPTIONS, POST, PUT"),
        ("/res/p", "GET, OPTIONS, POST, PUT"),
    ],
)
async def test_stream_api_options_and_wrong_methods(client: httpx.AsyncClient, path: str, allow: str) -> None:
    options = await client.options(STREAMS + path)
    assert options.status_code == 204
    assert options.headers["allow"] == allow
    assert "content-type" not in options.headers and options.content == b""
    for method in ("DELETE", "PATCH"):
        response = await client.request(method, STREAMS + path)
        assert_problem(response, 405, "method_not_allowed")
        assert response.headers["allow"] == allow


async def test_options_on_json_routes_is_204(client: httpx.AsyncClient) -> None:
    response = await client.options(DB + "/query")
    assert response.status_code == 204
    assert response.headers["allow"] == "OPTIONS, POST"
    assert "content-type" not in response.headers


async def test_no_content_responses_carry_no_content_type(client: httpx.AsyncClient) -> None:
    minted = await client.post("/api/v1/admin/tokens", json={"scopes": ["bad:query.read"]})
    revoked = await client.delete(f"/api/v1/admin/tokens/{minted.json()['id']}")
    deleted = await client.delete(DB)
    for response in (revoked, deleted):
        assert response.status_code == 204
        assert "content-type" not in response.headers
        assert response.content == b""


@pytest.mark.parametrize("held", [False, True])
async def test_lease_token_with_non_ascii_digits_is_a_mismatch(client: httpx.AsyncClient, held: bool) -> None:
    # "²" passes str.isdigit() but not int(): the fence read from the token's head was a 500.
    if held:
        acquired = await client.post(DB + "/leases/acquire", json={"resource": "r", "owner": "o"})
        assert acquired.status_code == 201, acquired.text
    for token in ("\u00b2.x", "\u0661\u0662.x"):
        response = await client.post(DB + "/leases/renew", json={"resource": "r", "lease_token": token})
        assert_problem(response, 403, "lease_token_mismatch")


@pytest.mark.parametrize(
    ("headers", "named"),
    [
        ({}, "no Content-Type"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, "Content-Type: application/x-www-form-urlencoded"),
        ({"Content-Type": "text/plain"}, "Content-Type: text/plain"),
    ],
)
async def test_json_body_without_json_content_type_names_the_header(
    client: httpx.AsyncClient, headers: dict[str, str], named: str
) -> None:
    """``curl -d '{...}'`` without ``-H 'Content-Type: application/json'``: the answer says which header."""
    r = await client.post(f"{DB}/query", content=b'{"sql": "SELECT 1"}', headers=headers)
    body = assert_problem(r, 400, "validation_failed")
    want = f"the body must be JSON sent with Content-Type: application/json (this request had {named})"
    assert body["detail"] == want
