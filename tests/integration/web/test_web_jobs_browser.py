"""The job queue pages in a real browser (Playwright driving Debian's Chromium) against a real skald:
from the document's page to the queues (their counts updating live), a queue's dead jobs, a job's
errors, and its buttons (retry a job, retry all dead, pause and resume) as an administrator works
them. Every page passes :func:`support.browser.check_page` (screenshots at 1280x900 and 390x844, no
sideways scrolling at 390 px, labelled fields, every control reachable from the keyboard)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from support.browser import check_page, chromium, screenshot_dir, tab_to
from support.live import ADMIN_TOKEN, LiveServer, start_live_server

from skald.config import Settings

DB = "shop"
J = f"/api/v1/db/{DB}/jobs"


@pytest.fixture
async def web_server(nursery: trio.Nursery, data_dir: Path) -> LiveServer:
    # cookie_secure stays on, as `make run` ships it: Chromium keeps Secure cookies for http://127.0.0.1
    settings = Settings(data_dir=data_dir, port=0, admin_token=ADMIN_TOKEN, rate_limit_per_second=10_000.0,
                        rate_limit_burst=100_000)
    return await start_live_server(nursery, settings)


async def seed(server: LiveServer) -> dict[str, int]:
    """mail: two dead jobs (each failed its only attempt) and one queued; sms: one queued."""
    async with server.client() as api:
        assert (await api.put(f"/api/v1/db/{DB}")).status_code == 201
        jobs = [{"queue": "mail", "payload": {"to": name}, "max_attempts": 1} for name in ("ann", "bob")]
        jobs += [{"queue": "mail", "payload": {"to": "cy"}}, {"queue": "sms", "payload": {"to": "dee"}}]
        ids = [j["id"] for j in (await api.post(J + "/batch", json={"jobs": jobs})).json()["jobs"]]
        got = (await api.post(J + "/fetch", json={"queues": ["mail"], "worker_id": "w1", "max_jobs": 2})).json()
        for job in got["jobs"]:
            r = await api.post(f"{J}/{job['id']}/fail", json={"lease": job["lease"]["token"],
                                                             "error": f"SMTP 550 for {job['payload']['to']}",
                                                             "backtrace": "Traceback (most recent call last): …"})
            assert r.json()["state"] == "dead"
    return {"ann": ids[0], "bob": ids[1], "cy": ids[2]}


def admin_flow(base: str, shots: Path, ids: dict[str, int]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    report: dict[str, Any] = {}
    seen["report"] = report
    with chromium() as browser, httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as api:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        seen["errors"] = errors

        page.goto(base + f"/ui/db/{DB}")
        page.wait_for_url(re.compile(r".*/ui/login\?next="))
        page.fill("#token", ADMIN_TOKEN)
        page.click("#token-login button[type=submit]")
        page.wait_for_url(base + f"/ui/db/{DB}")
        page.click("#jobs-link")
        page.wait_for_url(base + f"/ui/db/{DB}/jobs")
        seen["queues"] = page.locator("#queues tbody tr td:first-child").all_text_contents()
        seen["mail_dead"] = page.text_content("#queues tr[data-queue=mail] td[data-state=dead]")
        # live counts: a job enqueued elsewhere shows up without a reload
        page.wait_for_function("() => document.querySelector('[data-job-counts]').dataset.live === '1'")
        seen["queued_before"] = page.text_content("#queues tr[data-queue=mail] td[data-state=queued]")
        assert api.post(J, json={"queue": "mail", "payload": {"to": "eve"}}).status_code == 201
        page.wait_for_function(
            "() => document.querySelector('#queues tr[data-queue=mail] td[data-state=queued]').textContent === '2'")
        seen["queued_after"] = page.text_content("#queues tr[data-queue=mail] td[data-state=queued]")
        check_page(page, "jobs", shots, report)

        page.click("#queues a:text-is('mail')")
        page.click("#states a:has-text('dead')")
        page.wait_for_url(re.compile(r".*state=dead"))
        seen["dead_rows"] = page.locator("#jobs tbody tr").count()
        check_page(page, "queue", shots, report)

        page.click(f"#jobs a:text-is('{ids['ann']}')")
        page.wait_for_url(base + f"/ui/db/{DB}/jobs/{ids['ann']}")
        seen["errors_shown"] = page.locator("#errors li").all_text_contents()
        seen["payload"] = page.text_content("#payload")
        check_page(page, "job", shots, report)
        page.focus("#state")
        tab_to(page, "#retry")  # the keyboard alone retries it
        page.keyboard.press("Enter")
        page.wait_for_url(re.compile(r".*done=retried"))
        seen["retried_notice"] = page.text_content("#notice")
        seen["retried_state"] = page.text_content("#state")

        page.goto(base + f"/ui/db/{DB}/jobs/queues/mail?state=dead")
        page.click("#retry-dead")
        page.wait_for_url(re.compile(r".*done=retried-dead"))
        seen["dead_after"] = api.post(J + "/search", json={"filter": {"queue": "mail", "state": "dead"}}).json()
        page.click("#pause")
        page.wait_for_url(re.compile(r".*done=paused"))
        seen["paused_pill"] = page.locator("#paused").count()
        seen["fetch_while_paused"] = api.post(J + "/fetch", json={"queues": ["mail"], "worker_id": "w2"}).status_code
        check_page(page, "queue-paused", shots, report)
        page.click("#resume")
        page.wait_for_url(re.compile(r".*done=resumed"))
        seen["fetch_after_resume"] = api.post(J + "/fetch", json={"queues": ["mail"], "worker_id": "w2"}).status_code
        context.close()
    return seen


async def test_admin_works_a_queue_in_the_browser(web_server: LiveServer, tmp_path: Path) -> None:
    ids = await seed(web_server)
    shots = screenshot_dir(tmp_path / "screenshots")
    seen = await trio.to_thread.run_sync(admin_flow, web_server.url, shots, ids)

    assert seen["errors"] == []  # no script error or refused resource (CSP included)
    for name, found in seen["report"].items():
        assert found["overflow"] <= 0, f"{name} scrolls sideways at 390 px by {found['overflow']} px"
        assert found["unlabelled"] == [], f"{name} has fields without a label: {found['unlabelled']}"
        assert found["unreachable"] == [], f"{name} has controls the keyboard cannot reach"
    assert seen["queues"] == ["mail", "sms"] and seen["mail_dead"] == "2"
    assert seen["queued_before"] == "1" and seen["queued_after"] == "2"
    assert seen["dead_rows"] == 2
    assert len(seen["errors_shown"]) == 1 and "attempt 1" in seen["errors_shown"][0]
    assert "SMTP 550 for ann" in seen["errors_shown"][0]
    assert '"to": "ann"' in seen["payload"]
    assert "queued again" in seen["retried_notice"] and seen["retried_state"] == "queued"
    assert seen["dead_after"]["jobs"] == []  # bob, the other dead one, went back too
    assert seen["paused_pill"] == 1 and seen["fetch_while_paused"] == 204
    assert seen["fetch_after_resume"] == 200
