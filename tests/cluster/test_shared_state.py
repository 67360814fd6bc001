"""State that is not a document looks the same from every node: tokens (minted, revoked), the registry,
web sessions (opened on one node, used and ended on others) and the audit log (one log, same ids)."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
import trio
from support.cluster import ClusterFactory, client, owners


async def status_with(url: str, token: str) -> int:
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}) as http:
        return (await http.post("/api/v1/db/shared-0/query", json={"sql": "SELECT 1"})).status_code


async def until_every_node_answers(urls: list[str], token: str, status: int) -> float:
    """Ask each node until it answers ``status``; return how long the slowest took (seconds)."""
    started = trio.current_time()
    seen: list[int] = []
    try:
        with trio.fail_after(30):
            for url in urls:
                while (got := await status_with(url, token)) != status:  # again: the copy travels by etcd's watch
                    seen.append(got)
    except trio.TooSlowError:
        raise AssertionError(f"still answering {sorted(set(seen[-20:]))}, not {status}") from None
    return trio.current_time() - started


async def signed_in_via(url: str, token: str) -> str:
    """Open a token session (/ui/login) on one node; return its cookie value."""
    async with httpx.AsyncClient(base_url=url, follow_redirects=False) as web:
        form = await web.get("/ui/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf, form.text
        # the nodes set Secure cookies (cookie_secure is on): send the form's cookie by hand over http
        done = await web.post("/ui/login", data={"csrf": csrf[1], "token": token},
                              headers={"Cookie": f"skald_login_csrf={csrf[1]}"})
        assert done.status_code == 303, done.text
        cookie = re.search(r"skald_session=([^;]+)", done.headers["set-cookie"])
        assert cookie, done.headers
        return cookie[1]


async def page_status(url: str, cookie: str) -> tuple[int, str]:
    async with httpx.AsyncClient(base_url=url, cookies={"skald_session": cookie}, follow_redirects=False) as web:
        page = await web.get("/ui/tokens")
        return page.status_code, page.text


async def until_session(urls: list[str], cookie: str, signed_in: bool) -> float:
    """Ask each node until the session is (or is no longer) recognised; how long the slowest took."""
    started = trio.current_time()
    with trio.fail_after(30):
        for url in urls:
            while ((await page_status(url, cookie))[0] == 200) != signed_in:  # the copy travels by etcd
                pass
    return trio.current_time() - started


async def audit_event(http: httpx.AsyncClient, url: str, event: str, actor: str) -> dict[str, Any]:
    """The cluster's audit log read through ``url``, asked until it holds that event (collection runs ~2/s)."""
    with trio.fail_after(30):
        while True:
            page = await http.get(f"{url}/api/v1/admin/audit", params={"event": event, "limit": 1000})
            assert page.status_code == 200, page.text
            found = [e for e in page.json()["events"] if e["actor"] == actor]
            if found:
                return dict(found[0])


@pytest.mark.slow
async def test_tokens_and_the_registry_are_the_same_from_every_node(start_cluster: ClusterFactory) -> None:
    async with start_cluster(3) as cluster, client(cluster.url) as http:
        for n in range(6):
            assert (await http.put(f"/api/v1/db/shared-{n}")).status_code == 201
        urls = [node.url for node in cluster.nodes]
        async with httpx.AsyncClient(headers=http.headers) as direct:
            for url in urls:  # every node lists every document of the cluster, wherever it lives
                listed = (await direct.get(f"{url}/api/v1/db")).json()["documents"]
                assert {f"shared-{n}" for n in range(6)} <= {d["db_id"] for d in listed}
            owned = 0
            for node in cluster.nodes:  # /status: what each node owns and replicates
                block = (await direct.get(f"{node.url}/status")).json()["cluster"]
                assert block["node_id"] == node.node_id and block["lease_remaining_seconds"] > 0
                assert set(block["nodes"]) == {"node1", "node2", "node3"}
                # _audit: the cluster's audit log, an owned document like the others (test below)
                assert set(block["replication"]) <= {f"shared-{n}" for n in range(6)} | {"_audit"}
                owned += block["documents_owned"] - ("_audit" in block["replication"])
                assert len(block["replication"]) == block["documents_owned"]
            assert owned == 6
            minted = await direct.post(
                f"{urls[0]}/api/v1/admin/tokens", json={"scopes": ["shared-*:query.read"], "label": "shared"}
            )
            assert minted.status_code == 201, minted.text
        token, token_id = minted.json()["token"], minted.json()["id"]
        seen = await until_every_node_answers(urls, token, 200)
        # Through HAProxy (round robin for /api/v1/db) every answer lists every document.
        for _ in range(3):
            listed = (await http.get("/api/v1/db")).json()["documents"]
            assert {f"shared-{n}" for n in range(6)} <= {d["db_id"] for d in listed}
        assert len(set((await owners(cluster)).values())) >= 2  # they do live on different nodes

        # A web session opened on node1 works on node2 and node3; a logout on node3 ends it everywhere.
        cookie = await signed_in_via(urls[0], token)
        session_seen = await until_session(urls, cookie, signed_in=True)
        status, page = await page_status(urls[1], cookie)
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert status == 200 and csrf, page
        async with httpx.AsyncClient(base_url=urls[2], cookies={"skald_session": cookie}) as web:
            out = await web.post("/auth/logout", data={"csrf": csrf[1]}, follow_redirects=False)
            assert out.status_code == 303, out.text
        session_ended = await until_session(urls, cookie, signed_in=False)

        # The audit log: the login happened on node1, the logout on node3; every node shows both, same ids.
        async with httpx.AsyncClient(headers=http.headers) as direct:
            logins = [await audit_event(direct, url, "login", token_id) for url in urls]
            logouts = [await audit_event(direct, url, "logout", token_id) for url in urls]
        assert all(e == logins[0] for e in logins) and logins[0]["node"] == "node1", logins
        assert all(e == logouts[0] for e in logouts) and logouts[0]["node"] == "node3", logouts
        assert logouts[0]["id"] > logins[0]["id"]
        async with httpx.AsyncClient(headers=http.headers) as direct:
            assert (await direct.delete(f"{urls[2]}/api/v1/admin/tokens/{token_id}")).status_code in (200, 204)
        refused = await until_every_node_answers(urls, token, 401)
        print(f"\ntoken minted on node1 accepted by all 3 nodes after {seen:.3f} s; revocation on node3 "
              f"refused everywhere after {refused:.3f} s; a session opened on node1 seen by all after "
              f"{session_seen:.3f} s, its logout on node3 seen by all after {session_ended:.3f} s")
