"""Legacy request/responder, switch ("double clutch"), hooks, /u auth and the public rate limit."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import httpx
import trio
from support.live import LiveServer, make_settings, start_live_server
from support.relay import channel_key, wait_for_requests, wait_for_waiters

from skald.relay.channels import RelayHub, RequestChannels


def _requests(server: LiveServer) -> RequestChannels:
    channels: RequestChannels = server.state.relay_requests
    return channels


async def _wait_requesters(server: LiveServer, path: str, n: int = 1, responders: int = 0) -> None:
    await wait_for_requests(_requests(server), channel_key("public", "p", path), requesters=n, responders=responders)


async def test_get_responder_receives_the_request(server: LiveServer) -> None:
    got: list[httpx.Response] = []
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        async with trio.open_nursery() as nursery:

            async def requester() -> None:
                await client.post("/p/req/api?x=1&token=t", content=b"question", headers={"user-agent": "ua"})

            nursery.start_soon(requester)
            await _wait_requesters(server, "res/api")
            got.append(await client.get("/p/res/api"))
            nursery.cancel_scope.cancel()  # as legacy, a GET responder cannot answer: the requester waits on
    r = got[0]
    assert r.content == b"question"
    assert r.headers["patch-uri"] == "/p/req/api?x=1"
    assert r.headers["user-agent"] == "ua"


async def test_post_responder_answers_with_status_and_headers(server: LiveServer) -> None:
    results: dict[str, httpx.Response] = {}
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:

        async def responder() -> None:
            headers = {"content-type": "application/json", "patch-status": "201", "patch-h-x-answer": "yes"}
            results["responder"] = await client.post("/p/res/calc", content=b'{"sum": 3}', headers=headers)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(responder)
            await _wait_requesters(server, "res/calc", n=0, responders=1)
            results["requester"] = await client.get("/p/req/calc")
    answer = results["requester"]
    assert answer.status_code == 201 and answer.content == b'{"sum": 3}'
    assert answer.headers["content-type"] == "application/json" and answer.headers["x-answer"] == "yes"
    assert "patch-status" not in answer.headers
    assert results["responder"].status_code == 200


# A requester is any method (spec and legacy): HEAD and an extension method included.
REQUESTER_METHODS = ("DELETE", "PATCH", "OPTIONS", "HEAD", "PURGE")


async def _ask(client: httpx.AsyncClient, method: str, path: str, into: list[httpx.Response]) -> None:
    content = b"" if method == "HEAD" else f"asked with {method}".encode()
    into.append(await client.request(method, path, content=content))


async def test_a_requester_may_use_any_method(server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        for method in REQUESTER_METHODS:
            channel = f"any-{method}"
            # a GET responder receives the request ...
            got: list[httpx.Response] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_ask, client, method, f"/p/req/{channel}?m=1", [])
                await _wait_requesters(server, f"res/{channel}")
                got.append(await client.get(f"/p/res/{channel}"))
                nursery.cancel_scope.cancel()  # it cannot answer
            asked = b"" if method == "HEAD" else f"asked with {method}".encode()
            assert (got[0].status_code, got[0].content) == (200, asked), method
            assert got[0].headers["patch-uri"] == f"/p/req/{channel}?m=1"
            # ... and a POST responder answers it
            answered: list[httpx.Response] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(client.post, f"/p/res/{channel}", content=b"answer",
                                           headers={"patch-status": "202"}))
                await _wait_requesters(server, f"res/{channel}", n=0, responders=1)
                await _ask(client, method, f"/p/req/{channel}", answered)
            assert answered[0].status_code == 202, method
            assert answered[0].content == (b"" if method == "HEAD" else b"answer")


async def test_only_get_mints_a_hook(server: LiveServer) -> None:
    """As legacy: ``POST /h`` (or PUT, or on ``/r``) is 405, not a new channel."""
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        for path in ("/h", "/r"):
            for method in ("POST", "PUT", "DELETE", "PATCH"):
                r = await client.request(method, path, content=b"x")
                assert (r.status_code, r.headers.get("allow")) == (405, "GET"), (method, path)
                assert r.headers["content-type"].startswith("text/plain")
            assert (await client.get(path)).json().keys() == {"channel", "secret"}


async def test_invalid_patch_status_is_ignored_and_empty_id_is_400(server: LiveServer) -> None:
    results: dict[str, httpx.Response] = {}
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        assert (await client.get("/p/req/")).status_code == 400
        assert (await client.get("/p/res/")).status_code == 400

        async def responder() -> None:
            results["r"] = await client.put("/p/res/s", content=b"ok", headers={"patch-status": "999"})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(responder)
            await _wait_requesters(server, "res/s", n=0, responders=1)
            results["q"] = await client.post("/p/req/s", content=b"?")
    assert results["q"].status_code == 200 and results["q"].content == b"ok"


async def test_switch_double_clutch(server: LiveServer) -> None:
    results: dict[str, httpx.Response] = {}
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:

        switched = trio.Event()

        async def switcher() -> None:
            results["switch"] = await client.post("/p/res/door?switch", content=b"private-42")
            switched.set()

        async def requester() -> None:
            results["request"] = await client.post("/p/req/door", content=b"knock", headers={"patch-h-x-id": "7"})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(switcher)
            await _wait_requesters(server, "res/door", n=0, responders=1)
            nursery.start_soon(requester)
            with trio.fail_after(10):
                await switched.wait()
            r = await client.post("/p/private-42", content=b"come in", headers={"patch-status": "202"})
            assert r.status_code == 200
    switch = results["switch"]
    assert switch.content == b"knock" and switch.headers["patch-h-x-id"] == "7"  # unstripped
    assert switch.headers["patch-uri"] == "/p/req/door"
    assert results["request"].status_code == 202 and results["request"].content == b"come in"


async def test_switch_validation(server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        for body in (b"", b"a/b", b"a?b", b"x" * 257):
            r = await client.post("/p/res/v?switch", content=body)
            assert r.status_code == 400, body
            assert r.headers["content-type"].startswith("text/plain")
        assert (await client.get("/p/res/v?switch")).status_code == 405


async def test_switch_timeout_is_504_naming_the_channel(nursery: trio.Nursery, data_dir: Path) -> None:
    live = await start_live_server(nursery, make_settings(data_dir, switch_timeout_seconds=0.5))
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        async with trio.open_nursery() as inner:
            inner.start_soon(lambda: client.post("/p/res/t?switch", content=b"nobody-answers"))
            await _wait_requesters(live, "res/t", n=0, responders=1)
            r = await client.post("/p/req/t", content=b"hello?")
        metrics = (await client.get("/metrics")).text
    assert r.status_code == 504
    assert "nobody-answers" in r.text and r.headers["content-type"].startswith("text/plain")
    assert "skald_stream_switch_timeouts_total 1.0" in metrics
    await live.stop()


async def test_hooks_need_their_secret(server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        forward = (await client.get("/h")).json()
        reverse = (await client.get("/r")).json()
        assert forward["channel"] != reverse["channel"] and len(forward["secret"]) == 64
        assert (await client.post(f"/h/{forward['channel']}", content=b"x")).status_code == 401
        assert (await client.post(f"/h/{forward['channel']}?secret=wrong", content=b"x")).status_code == 401
        assert (await client.get(f"/r/{reverse['channel']}")).status_code == 401
        got: list[bytes] = []
        hub: RelayHub = server.state.relay
        async with trio.open_nursery() as nursery:

            async def consume() -> None:
                got.append((await client.get(f"/h/{forward['channel']}")).content)

            nursery.start_soon(consume)
            await wait_for_waiters(hub, channel_key("public", "h", forward["channel"]), consumers=1)
            r = await client.post(f"/h/{forward['channel']}?secret={forward['secret']}", content=b"hooked")
            assert r.status_code == 200
    assert got == [b"hooked"]


async def test_user_namespace_uses_skald_tokens(server: LiveServer) -> None:
    await server.state.supervisor.create_document("alice")
    reader = await server.mint_token("alice:stream.read:/inbox")
    writer = await server.mint_token("alice:stream.write")
    hub: RelayHub = server.state.relay
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        assert (await client.get("/u/alice/inbox")).status_code == 401
        assert (await client.get("/u/alice/inbox", headers={"authorization": "Bearer nope"})).status_code == 401
        r = await client.get("/u/alice/other", headers={"authorization": f"Bearer {reader}"})
        assert r.status_code == 403 and r.headers["content-type"].startswith("text/plain")
        assert (await client.post(f"/u/alice/inbox?token={reader}", content=b"x")).status_code == 403
        got: list[bytes] = []
        async with trio.open_nursery() as nursery:

            async def consume() -> None:
                got.append((await client.get(f"/u/alice/inbox?token={reader}")).content)

            nursery.start_soon(consume)
            await wait_for_waiters(hub, channel_key("alice", "u", "inbox"), consumers=1)
            r = await client.post("/u/alice/inbox", content=b"for alice", headers={"authorization": f"token {writer}"})
            assert r.status_code == 200
    assert got == [b"for alice"]


async def test_public_rate_limit_per_client(nursery: trio.Nursery, data_dir: Path) -> None:
    settings = make_settings(data_dir, public_rate_per_second=0.01, public_rate_burst=3, trusted_proxies="127.0.0.1")
    live = await start_live_server(nursery, settings)
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        codes = [(await client.post("/p/pubsub/r", content=b"x")).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        refused = await client.post("/p/pubsub/r", content=b"x")
        assert int(refused.headers["retry-after"]) >= 1
        other = await client.post("/p/pubsub/r", content=b"x", headers={"x-forwarded-for": "203.0.113.9"})
        assert other.status_code == 200  # another client (behind the trusted proxy) is unaffected
    await live.stop()


async def test_hook_key_survives_restart(nursery: trio.Nursery, data_dir: Path) -> None:
    first = await start_live_server(nursery, make_settings(data_dir))
    async with httpx.AsyncClient(base_url=first.url) as client:
        minted = json.loads((await client.get("/h")).content)
    await first.stop()
    second = await start_live_server(nursery, make_settings(data_dir))
    hub: RelayHub = second.state.relay
    async with httpx.AsyncClient(base_url=second.url, timeout=30) as client:
        async with trio.open_nursery() as inner:
            inner.start_soon(client.get, f"/h/{minted['channel']}")
            await wait_for_waiters(hub, channel_key("public", "h", minted["channel"]), consumers=1)
            r = await client.post(f"/h/{minted['channel']}?secret={minted['secret']}", content=b"x")
    assert r.status_code == 200
    await second.stop()
