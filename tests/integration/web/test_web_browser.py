"""The web face in a real browser: Playwright driving Debian's Chromium against a real skald.

Signed out: the home page and the API docs. Then, signed in with the admin token (no OIDC provider):
the document list, a table's rows (sort, filter, pages), the SQL box and its CSV link, a live query
updating while another client writes, a topic tail while messages arrive and its replay from an id,
the webhook inbox, leases, blobs, the admin's token table (mint, revoke someone else's token), and
sign-out. A second test signs in with a narrow token: it can do what its scopes say and nothing else,
and revoking the token ends the browser session. Every page passes :func:`support.browser.check_page`
(screenshots at 1280x900 and 390x844, no sideways scrolling at 390 px, labelled fields).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from support.browser import check_page, chromium, screenshot_dir, tab_to
from support.live import ADMIN_TOKEN, LiveServer, start_live_server
from support.s3 import s3_bucket

from skald.auth.scopes import Scope
from skald.auth.tokens import create_token
from skald.config import Settings

DB = "notes"
BLOB = b"a small attachment\n" * 20
__all__ = ["s3_bucket"]  # the fixture: a fresh bucket per test


@pytest.fixture
async def web_server(nursery: trio.Nursery, data_dir: Path, s3_endpoint: str, s3_bucket: str) -> LiveServer:
    # cookie_secure stays on, as `make run` ships it: the browser must sign in over http://127.0.0.1
    settings = Settings(data_dir=data_dir, port=0, admin_token=ADMIN_TOKEN, rate_limit_per_second=10_000.0,
                        rate_limit_burst=100_000, s3_endpoint_url=s3_endpoint, s3_bucket=s3_bucket,
                        s3_access_key_id="test", s3_secret_access_key="test")
    return await start_live_server(nursery, settings)


async def seed(server: LiveServer) -> None:
    """A document with two tables (one of 120 rows: three pages), messages, a webhook, a lease, a blob."""
    async with server.client() as api:
        assert (await api.put(f"/api/v1/db/{DB}")).status_code == 201
        statements = [
            {"sql": "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER)"},
            {"sql": "INSERT INTO items (name, qty) VALUES ('apple', 3), ('pear', 5), ('fig', 1)"},
            {"sql": "CREATE TABLE log (n INTEGER PRIMARY KEY, line TEXT)"},
            {"sql": "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 120) "
                    "INSERT INTO log SELECT n, 'line ' || n FROM c"},
        ]
        assert (await api.post(f"/api/v1/db/{DB}/query/batch", json={"statements": statements})).status_code == 200
        for n in (1, 2):
            r = await api.post(f"/api/v1/db/{DB}/messages", json={"topic": "sensors/a", "payload": {"n": n}})
            assert r.status_code == 201
        r = await api.post(f"/api/v1/db/{DB}/webhooks/github", content=b'{"action": "opened"}',
                           headers={"Content-Type": "application/json"})
        assert r.status_code == 201, r.text
        r = await api.post(f"/api/v1/db/{DB}/leases/acquire",
                           json={"resource": "jobs/nightly", "owner": "worker-1", "ttl_seconds": 600})
        assert r.status_code == 201, r.text
        digest = hashlib.sha256(BLOB).hexdigest()
        init = await api.post(f"/api/v1/db/{DB}/blobs/init-upload", json={"sha256": digest, "size": len(BLOB)})
        assert init.status_code == 200, init.text
        spec = init.json()["upload"]
        async with httpx.AsyncClient() as raw:
            assert (await raw.put(spec["url"], content=BLOB, headers=spec["headers"])).status_code == 200
        assert (await api.post(f"/api/v1/db/{DB}/blobs/complete-upload", json={"sha256": digest})).status_code == 200
        claim = await api.post(f"/api/v1/db/{DB}/blobs/claim", json={"sha256": digest, "ref": "items/1/photo"})
        assert claim.status_code == 200, claim.text
        # Tokens made outside the web page: one by the CLI's code path, one by the admin API.
        minted = await api.post("/api/v1/admin/tokens", json={"scopes": [f"{DB}:query.read"], "label": "from-api",
                                                              "owner": "carol"})
        assert minted.status_code == 201
    await server.state.supervisor.service.write(
        lambda conn: create_token(conn, scopes=[Scope(DB, "pub.publish")], label="from-cli", owner="ci")
    )


def admin_flow(base: str, shots: Path) -> dict[str, Any]:
    """The admin's whole visit (sync Playwright in a worker thread)."""
    seen: dict[str, Any] = {}
    report: dict[str, Any] = {}
    seen["report"] = report
    with chromium() as browser, httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as api:
        context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        seen["errors"] = errors

        page.goto(base + "/")
        seen["home_title"] = page.text_content("h1")
        check_page(page, "home", shots, report)
        page.goto(base + "/docs")
        page.wait_for_selector("#swagger-ui .opblock-summary-path")  # rendered from /openapi.json
        seen["docs_has_query"] = page.locator("#swagger-ui", has_text="/api/v1/db/{db_id}/query").count() > 0
        check_page(page, "docs", shots, report)

        # sign in from the keyboard alone: Tab to the token field, type, Enter
        page.goto(base + "/ui")
        page.wait_for_url(re.compile(r".*/ui/login\?next=%2Fui$"))
        check_page(page, "login", shots, report)
        tab_to(page, "#token")
        page.keyboard.type(ADMIN_TOKEN)
        page.keyboard.press("Enter")
        page.wait_for_url(base + "/ui")
        seen["who"] = page.text_content("#who")
        seen["cookie"] = next(c for c in context.cookies() if c["name"] == "skald_session")
        seen["documents"] = [" ".join(row.split()) for row in page.locator("#documents tbody tr").all_text_contents()]
        check_page(page, "documents", shots, report)

        page.click(f"#documents a:text-is('{DB}')")
        page.wait_for_url(base + f"/ui/db/{DB}")
        seen["tables"] = page.locator("#tables li").all_text_contents()
        check_page(page, "document", shots, report)

        # a table: sort by clicking the header (ascending, then descending), filter, pages
        page.click("#tables a:text-is('items')")
        page.click("#rows th a:text-is('qty')")
        page.wait_for_url(re.compile(r".*sort=qty"))
        seen["asc"] = page.locator("#rows tbody tr td:nth-child(3)").all_text_contents()
        page.click("#rows th a:has-text('qty')")
        page.wait_for_url(re.compile(r".*desc=1"))
        seen["desc"] = page.locator("#rows tbody tr td:nth-child(3)").all_text_contents()
        page.select_option("#f-column", "name")
        page.select_option("#f-op", "contains")
        page.fill("#f-value", "p")
        page.click("#filter button[type=submit]")
        page.wait_for_url(re.compile(r".*value=p"))
        seen["filtered"] = page.locator("#rows tbody tr td:nth-child(2)").all_text_contents()
        check_page(page, "table", shots, report)
        page.goto(base + f"/ui/db/{DB}/tables/log")
        seen["log_status"] = page.text_content("#row-count")
        page.click("#next")
        seen["log_page2_first"] = page.locator("#rows tbody tr td:first-child").first.text_content()
        seen["log_status2"] = page.text_content("#row-count")

        # the SQL box: a read with a CSV link, then a write from the form (the keyboard runs it)
        page.goto(base + f"/ui/db/{DB}/sql")
        page.fill("#sql", "SELECT name, qty FROM items ORDER BY id")
        page.click("#sql-form button[type=submit]")
        seen["sql_rows"] = page.locator("#result tbody tr").count()
        with page.expect_download() as download:
            page.click("#csv")
        seen["csv"] = Path(download.value.path()).read_text()
        check_page(page, "sql", shots, report)
        page.fill("#sql", "INSERT INTO items (name, qty) VALUES ('plum', 8)")
        page.focus("#sql")
        tab_to(page, "#sql-form button[type=submit]")
        page.keyboard.press("Enter")
        page.wait_for_selector("#result-status")
        seen["write_status"] = page.text_content("#result-status")

        # a live query updates in place while another client writes
        page.goto(base + f"/ui/db/{DB}/live?sql=" + "SELECT count(*) AS n FROM items")
        page.wait_for_function("() => document.querySelector('#live').dataset.updates === '1'")
        seen["live_before"] = page.text_content("#live-output tbody td")
        assert api.post(f"/api/v1/db/{DB}/query", json={"sql": "INSERT INTO items (name) VALUES ('kiwi')"}).is_success
        page.wait_for_function("() => document.querySelector('#live').dataset.updates === '2'")
        seen["live_after"] = page.text_content("#live-output tbody td")
        check_page(page, "live", shots, report)

        # a topic tail: the last messages, then one arriving while the page is open; replay from an id
        page.goto(base + f"/ui/db/{DB}/topics?topic=sensors/%2B")
        page.wait_for_function("() => document.querySelector('#tail').dataset.count === '2'")
        assert api.post(f"/api/v1/db/{DB}/messages", json={"topic": "sensors/b", "payload_text": "hot"}).is_success
        page.wait_for_function("() => document.querySelector('#tail').dataset.count === '3'")
        seen["tail"] = page.locator("#messages tbody tr td:first-child").all_text_contents()
        seen["tail_newest"] = page.locator("#messages tbody tr").first.text_content()
        check_page(page, "topics", shots, report)
        page.goto(base + f"/ui/db/{DB}/topics?topic=%23&since_id=1")
        page.wait_for_function("() => document.querySelector('#tail').dataset.count === '2'")
        seen["replay"] = page.locator("#messages tbody tr td:first-child").all_text_contents()

        for name in ("webhooks", "leases", "blobs"):
            page.goto(base + f"/ui/db/{DB}/{name}")
            seen[name] = page.locator("table.data tbody").text_content()
            check_page(page, name, shots, report)

        # tokens: every token, whoever minted it; mint one; revoke someone else's
        page.goto(base + "/ui/tokens")
        seen["token_labels"] = page.locator("#tokens tbody td[data-label=Label]").all_text_contents()
        page.fill("#label", "made-in-browser")
        page.fill("#scopes", f"{DB}:query.read")
        page.click("#create button[type=submit]")
        seen["minted"] = (page.text_content("#secret") or "").strip()
        page.goto(base + "/ui/tokens")
        check_page(page, "tokens", shots, report)
        page.click("#tokens tr:has-text('made-in-browser') button:text-is('Revoke')")
        page.wait_for_url(base + "/ui/tokens")
        seen["revoked_state"] = page.locator("#tokens tr:has-text('made-in-browser') .pill").text_content()
        seen["minted_after_revoke"] = httpx.get(
            base + f"/api/v1/db/{DB}/messages", headers={"Authorization": f"Bearer {seen['minted']}"}
        ).status_code

        # sign out: a signed-out page, and the old cookie signs nobody in
        page.click("#sign-out")
        page.wait_for_url(base + "/ui/signed-out")
        seen["signed_out"] = page.text_content("h1")
        check_page(page, "signed-out", shots, report)
        page.goto(base + "/ui")
        seen["after_sign_out"] = page.url
        with httpx.Client(base_url=base) as old:  # httpx keeps Secure cookies off http: send it by hand
            response = old.get("/ui", headers={"Cookie": "skald_session=" + seen["cookie"]["value"]})
            seen["old_cookie"] = response.status_code
        context.close()
    return seen


async def test_admin_browses_queries_watches_and_manages_tokens(web_server: LiveServer, tmp_path: Path) -> None:
    await seed(web_server)
    shots = screenshot_dir(tmp_path / "screenshots")
    seen = await trio.to_thread.run_sync(admin_flow, web_server.url, shots)

    assert seen["errors"] == []  # no script error or refused resource on any page (CSP included)
    for name, found in seen["report"].items():
        assert found["overflow"] <= 0, f"{name} scrolls sideways at 390 px by {found['overflow']} px"
        assert found["unlabelled"] == [], f"{name} has fields without a label: {found['unlabelled']}"
        assert found["unreachable"] == [], f"{name} has controls the keyboard cannot reach"
    assert len(list(shots.glob("*-1280.png"))) == len(seen["report"]) == len(list(shots.glob("*-390.png")))

    assert seen["home_title"].startswith("skald ")
    assert seen["docs_has_query"]
    assert seen["who"] == "admin"
    assert seen["cookie"]["httpOnly"] and seen["cookie"]["secure"] and seen["cookie"]["sameSite"] == "Lax"
    [row] = seen["documents"]
    assert re.fullmatch(rf"{DB} [0-9.]+ kB v[0-9]+ items, log, webhook_inbox", row)  # size, schema, tables
    assert seen["tables"] == ["items", "log", "webhook_inbox"]  # the inbox is a documented, readable table
    assert seen["asc"] == ["1", "3", "5"] and seen["desc"] == ["5", "3", "1"]
    assert sorted(seen["filtered"]) == ["apple", "pear"]
    assert seen["log_status"].startswith("120 rows") and "page 1 of 3" in seen["log_status"]
    assert seen["log_page2_first"] == "51" and "page 2 of 3" in seen["log_status2"]
    assert seen["sql_rows"] == 3
    assert seen["csv"].splitlines() == ["name,qty", "apple,3", "pear,5", "fig,1"]
    assert "1 changed" in seen["write_status"]
    assert seen["live_before"] == "4" and seen["live_after"] == "5"
    assert seen["tail"] == ["3", "2", "1"] and "hot" in seen["tail_newest"]
    assert seen["replay"] == ["3", "2"]
    assert "github" in seen["webhooks"] and '"action": "opened"' in seen["webhooks"]
    assert "jobs/nightly" in seen["leases"] and "worker-1" in seen["leases"]
    assert hashlib.sha256(BLOB).hexdigest() in seen["blobs"] and "items/1/photo" in seen["blobs"]
    assert {"from-api", "from-cli"} <= {label.split("tok_")[0] for label in seen["token_labels"]}
    assert seen["minted"].startswith("skd_")
    assert seen["revoked_state"] == "revoked" and seen["minted_after_revoke"] == 401
    assert seen["signed_out"] == "You are signed out"
    assert "/ui/login" in seen["after_sign_out"]
    assert seen["old_cookie"] == 303


def narrow_flow(base: str, token: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    with chromium() as browser:
        context = browser.new_context()
        page = context.new_page()
        page.goto(base + "/ui/login?next=/ui/db/" + DB + "/sql")
        page.fill("#token", "skd_not_a_real_token")
        page.click("#token-login button[type=submit]")
        seen["bad_token"] = page.text_content("#error")
        page.fill("#token", token)
        page.click("#token-login button[type=submit]")
        page.wait_for_url(base + f"/ui/db/{DB}/sql")
        page.fill("#sql", "SELECT count(*) FROM items")
        page.click("#sql-form button[type=submit]")
        seen["read"] = page.text_content("#result tbody td")
        page.fill("#sql", "DELETE FROM items")
        page.click("#sql-form button[type=submit]")
        seen["write"] = page.text_content("#error")
        page.goto(base + f"/ui/db/{DB}/blobs")
        seen["blobs"] = page.text_content("#error-code")
        page.goto(base + "/ui/tokens")
        seen["can_mint"] = page.locator("#create").count()
        seen["token_rows"] = page.locator("#tokens tbody tr").count()
        # the token is revoked elsewhere: the browser session ends with it
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
            token_id = admin.get("/api/v1/admin/tokens").json()["tokens"]
            narrow = next(t for t in token_id if t["label"] == "narrow")
            assert admin.delete(f"/api/v1/admin/tokens/{narrow['id']}").status_code == 204
        page.goto(base + f"/ui/db/{DB}")
        seen["after_revoke"] = page.url
        context.close()
    return seen


async def test_a_token_session_can_do_what_its_token_can(web_server: LiveServer) -> None:
    await seed(web_server)
    token = await web_server.mint_token(f"{DB}:query.read", label="narrow")
    seen = await trio.to_thread.run_sync(narrow_flow, web_server.url, token)
    assert "does not sign in" in seen["bad_token"]
    assert seen["read"] == "3"
    assert "query.write" in seen["write"]  # scope_denied, shown on the page
    assert seen["blobs"] == "scope_denied"
    assert seen["can_mint"] == 0 and seen["token_rows"] >= 1
    assert "/ui/login" in seen["after_revoke"]
