"""The job queue pages over plain HTTP against a real server: what they show, what their forms do,
and that a session can do what its token's jobs scopes say and nothing else."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
from support.live import ADMIN_TOKEN, LiveServer

DB = "shop"
J = f"/api/v1/db/{DB}/jobs"
UI = f"/ui/db/{DB}/jobs"


@contextlib.asynccontextmanager
async def signed_in(server: LiveServer, token: str) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """A browser-like client (cookies, no bearer token) signed in with ``token``, and its CSRF token."""
    async with server.client(None, follow_redirects=False) as web:
        yield web, await _sign_in(web, token)


async def _sign_in(web: httpx.AsyncClient, token: str) -> str:
    form = await web.get("/ui/login")
    login_csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert login_csrf
    ok = await web.post("/ui/login", data={"csrf": login_csrf[1], "token": token})
    assert ok.status_code == 303, ok.text
    page = await web.get("/ui")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)  # the session's (sign-out form)
    assert csrf
    return csrf[1]


async def seed(api: httpx.AsyncClient) -> dict[str, Any]:
    """mail: one dead job (failed its only attempt), one running, one queued; sms: one queued."""
    assert (await api.put(f"/api/v1/db/{DB}")).status_code == 201
    jobs = [{"queue": "mail", "payload": {"to": "ann"}, "max_attempts": 1},
            {"queue": "mail", "payload": {"to": "bob"}},
            {"queue": "mail", "payload": {"to": "cy"}},
            {"queue": "sms", "payload": {"to": "dee"}}]
    r = await api.post(J + "/batch", json={"jobs": jobs})
    assert r.status_code == 201
    ids = [j["id"] for j in r.json()["jobs"]]
    for _ in range(2):
        got = (await api.post(J + "/fetch", json={"queues": ["mail"], "worker_id": "w1"})).json()
        if got["id"] == ids[0]:
            failed = await api.post(f"{J}/{got['id']}/fail", json={"lease": got["lease"]["token"],
                                                                  "error": "SMTP 550 <ann>", "backtrace": "tb"})
            assert failed.json()["state"] == "dead"
    return {"dead": ids[0], "running": ids[1], "queued": ids[2], "sms": ids[3]}


async def job_state(api: httpx.AsyncClient, job_id: int) -> str:
    return str((await api.get(f"{J}/{job_id}")).json()["state"])


async def test_queue_pages_and_actions(server: LiveServer) -> None:
    async with server.client() as api:
        ids = await seed(api)
        async with signed_in(server, ADMIN_TOKEN) as (web, csrf):
            doc = await web.get(f"/ui/db/{DB}")
            assert 'id="jobs-link"' in doc.text and f'href="{UI}"' in doc.text  # linked from the document's page

            overview = await web.get(UI)
            assert overview.status_code == 200
            row = re.search(r'<tr data-queue="mail">(.*?)</tr>', overview.text, re.S)
            assert row
            counts = dict(re.findall(r'data-state="(\w+)">(?:<a [^>]*>)?(\d+)', row[1]))
            assert (counts["dead"], counts["running"], counts["queued"], counts["completed"]) == ("1", "1", "1", "0")
            assert 'data-queue="sms"' in overview.text

            dead = await web.get(f"{UI}/queues/mail", params={"state": "dead"})
            assert f'data-job="{ids["dead"]}"' in dead.text and f'data-job="{ids["queued"]}"' not in dead.text
            assert "SMTP 550 &lt;ann&gt;" in dead.text  # the last error, escaped

            detail = await web.get(f"{UI}/{ids['dead']}")
            assert detail.status_code == 200
            assert "attempt 1" in detail.text and "SMTP 550 &lt;ann&gt;" in detail.text and "backtrace" in detail.text
            assert 'id="retry"' in detail.text

            # every action is a form post carrying the session's CSRF token
            forged = await web.post(f"{UI}/queues/mail/retry-dead", data={})
            assert forged.status_code == 403 and "csrf_failed" in forged.text
            assert await job_state(api, ids["dead"]) == "dead"
            retried = await web.post(f"{UI}/queues/mail/retry-dead", data={"csrf": csrf})
            assert retried.status_code == 303
            assert retried.headers["location"] == f"{UI}/queues/mail?done=retried-dead"
            assert await job_state(api, ids["dead"]) == "queued"
            assert "Dead jobs queued again" in (await web.get(retried.headers["location"])).text

            paused = await web.post(f"{UI}/queues/mail/pause", data={"csrf": csrf})
            assert paused.status_code == 303
            page = await web.get(f"{UI}/queues/mail")
            assert 'id="paused"' in page.text and 'id="resume"' in page.text
            nothing = await api.post(J + "/fetch", json={"queues": ["mail"], "worker_id": "w2"})
            assert nothing.status_code == 204  # a paused queue hands out nothing
            assert (await web.post(f"{UI}/queues/mail/resume", data={"csrf": csrf})).status_code == 303
            queues = (await api.get(J + "/queues")).json()["queues"]
            assert not next(q for q in queues if q["name"] == "mail")["paused"]

            busy = await web.post(f"{UI}/{ids['running']}/retry", data={"csrf": csrf})
            assert busy.status_code == 409 and "job_state_conflict" in busy.text  # a running job: refused
            cancelled = await web.post(f"{UI}/{ids['queued']}/cancel", data={"csrf": csrf})
            assert cancelled.status_code == 303 and cancelled.headers["location"].endswith("?done=cancelled")
            assert await job_state(api, ids["queued"]) == "cancelled"
            deleted = await web.post(f"{UI}/{ids['queued']}/delete", data={"csrf": csrf})
            assert deleted.headers["location"] == f"{UI}/queues/mail?done=deleted"
            assert (await api.get(f"{J}/{ids['queued']}")).status_code == 404
            gone = await web.get(f"{UI}/{ids['queued']}")
            assert gone.status_code == 404 and "job_not_found" in gone.text

            assert (await web.get("/ui/db/nope/jobs")).status_code == 404
            bad_cursor = await web.get(f"{UI}/queues/mail", params={"state": "queued", "cursor": "x"})
            assert bad_cursor.status_code == 400 and "validation_failed" in bad_cursor.text
            unknown = await web.post(f"{UI}/queues/mail/explode", data={"csrf": csrf})
            assert unknown.status_code == 404
    async with server.client(None, follow_redirects=False) as anonymous:
        bad = await anonymous.get(f"{UI}/queues/no%20spaces")  # malformed: 400 for anyone, signed in or not
        assert bad.status_code == 400 and "validation_failed" in bad.text
        assert (await anonymous.get(f"{UI}/queues/mail")).status_code == 303  # else: to the sign-in
        for path in (f"{UI}/0", f"{UI}/{2**63}/retry"):  # ids no job can have
            method = anonymous.post if path.endswith("retry") else anonymous.get
            nobody = await method(path)
            assert nobody.status_code == 404 and "job_not_found" in nobody.text


async def test_queue_page_pages_through_every_job(server: LiveServer) -> None:
    async with server.client() as api:
        assert (await api.put(f"/api/v1/db/{DB}")).status_code == 201
        r = await api.post(J + "/batch", json={"jobs": [{"queue": "bulk", "payload": n} for n in range(120)]})
        enqueued = {j["id"] for j in r.json()["jobs"]}
        async with signed_in(server, ADMIN_TOKEN) as (web, _):
            seen: list[int] = []
            link: str | None = f"{UI}/queues/bulk?state=queued"
            pages = 0
            while link is not None:
                page = await web.get(link)
                assert page.status_code == 200
                seen += [int(i) for i in re.findall(r'data-job="(\d+)"', page.text)]
                pages += 1
                more = re.search(r'href="([^"]+)" rel="next"', page.text)
                link = f"{UI}/queues/bulk" + more[1].replace("&amp;", "&") if more else None
            assert pages == 3 and seen == sorted(enqueued, reverse=True)  # newest first, none twice


async def test_a_session_can_do_what_its_jobs_scopes_say(server: LiveServer) -> None:
    async with server.client() as api:
        ids = await seed(api)
    mail_admin = await server.mint_token(f"{DB}:jobs.admin:mail")
    async with signed_in(server, mail_admin) as (web, csrf):
        overview = await web.get(UI)
        assert 'data-queue="mail"' in overview.text and 'data-queue="sms"' not in overview.text
        assert (await web.get(f"{UI}/queues/sms")).status_code == 403
        assert (await web.get(f"{UI}/{ids['sms']}")).status_code == 403
        refused = await web.post(f"{UI}/{ids['sms']}/cancel", data={"csrf": csrf})
        assert refused.status_code == 403 and "scope_denied" in refused.text
        assert (await web.post(f"{UI}/queues/sms/pause", data={"csrf": csrf})).status_code == 403
        assert (await web.post(f"{UI}/{ids['queued']}/cancel", data={"csrf": csrf})).status_code == 303

    producer = await server.mint_token(f"{DB}:jobs.enqueue:mail", f"{DB}:query.read")
    async with signed_in(server, producer) as (web, csrf):
        assert 'id="jobs-link"' not in (await web.get(f"/ui/db/{DB}")).text
        assert (await web.get(UI)).status_code == 403  # listing queues is jobs.admin, as on the API
        own = await web.get(f"{UI}/{ids['dead']}")  # a producer follows its jobs
        assert own.status_code == 200 and 'id="retry"' not in own.text and 'id="job-actions"' not in own.text
        refused = await web.post(f"{UI}/{ids['dead']}/retry", data={"csrf": csrf})
        assert refused.status_code == 403 and "scope_denied" in refused.text

    async with server.client() as api:
        assert await job_state(api, ids["sms"]) == "queued" and await job_state(api, ids["dead"]) == "dead"
