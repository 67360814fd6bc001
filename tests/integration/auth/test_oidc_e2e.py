"""End-to-end OIDC: a real provider (npm oidc-provider), real Chromium (Playwright), real skald.

open /ui/tokens -> provider login -> back signed in -> create a token -> see it once -> use it over
HTTP -> revoke it in the page -> the API says 401. Also refused: a tampered ``state``, a replayed
code, ID tokens with a wrong audience (and wrong nonce, issuer, expiry or signature).
"""

from __future__ import annotations

import contextlib
import html
import os
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode, urljoin, urlparse

import httpx
import pytest
import trio
from support.live import LiveServer

from skald.auth.oidc import LoginFailed, verify_id_token

if TYPE_CHECKING:  # playwright is imported where a test launches the browser
    from playwright.sync_api import Browser, Page

OIDC_DIR = Path(__file__).resolve().parents[2] / "oidc"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]



def _require_tools() -> None:
    # Missing tools fail loudly (CI installs them): never a silent skip.
    assert shutil.which("node"), "node is required (apt nodejs)"
    assert Path(CHROMIUM).exists(), "Debian chromium is required at /usr/bin/chromium"
    assert (OIDC_DIR / "node_modules" / "oidc-provider").exists(), "run `npm ci` in tests/oidc"


@pytest.fixture
async def provider(server: LiveServer) -> AsyncIterator[str]:
    """``node tests/oidc/provider.mjs`` on 127.0.0.1; skald is pointed at it. Yields the issuer URL."""
    _require_tools()
    callback = server.url + "/auth/callback"
    proc = await trio.lowlevel.open_process(
        [str(shutil.which("node")), str(OIDC_DIR / "provider.mjs")],
        cwd=OIDC_DIR,
        env={**os.environ, "REDIRECT_URI": callback, "PORT": "0"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    try:
        output = b""
        with trio.fail_after(30):
            while b"\n" not in output:
                chunk = await proc.stdout.receive_some()
                assert chunk, f"provider exited: {output!r}"
                output += chunk
        match = re.search(rb"listening on (http://\S+)", output)
        assert match, f"provider did not start: {output!r}"
        issuer = match[1].decode()
        # The provider's port is known only now; the app reads settings at request time.
        server.state.settings = server.state.settings.replace(
            oidc_issuer=issuer, oidc_client_id="skald", oidc_client_secret="skald-secret",
            oidc_redirect_url=callback,
        )
        yield issuer
    finally:
        proc.terminate()
        await proc.wait()
        await proc.stdout.aclose()


@contextlib.contextmanager
def _browser() -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def _log_in_at_provider(page: Page, issuer: str, name: str) -> None:
    """Fill the provider's dev login form, then its consent prompt."""
    page.wait_for_url(re.compile("^" + re.escape(issuer) + "/interaction/"))
    page.fill("input[name=login]", name)
    page.fill("input[name=password]", "any-password")
    page.click("button[type=submit]")
    page.wait_for_load_state()
    if page.url.startswith(issuer + "/interaction/"):
        page.click("button[type=submit]")  # consent


def browser_flow(base: str, issuer: str) -> dict[str, Any]:
    """The whole browser scenario (sync Playwright, run in a worker thread)."""
    seen: dict[str, Any] = {}
    with _browser() as browser:
        context = browser.new_context(permissions=["clipboard-read", "clipboard-write"])
        page = context.new_page()
        page.goto(base + "/ui/tokens")
        page.wait_for_url(re.compile(r".*/ui/login"))
        page.click("#oidc-login")  # the sign-in page offers the provider beside the token form
        _log_in_at_provider(page, issuer, "alice")
        page.wait_for_url(base + "/ui/tokens")
        seen["owner"] = page.text_content("#who")
        seen["cookies"] = [c for c in context.cookies() if c["name"] == "skald_session"]

        page.fill("#label", "e2e")
        page.fill("#scopes", "alice-example.test:db.admin")
        page.select_option("#expires", "7d")
        page.click("#create button[type=submit]")
        page.wait_for_selector("#secret")
        secret = (page.text_content("#secret") or "").strip()
        seen["secret"] = secret
        page.click("#copy")
        page.locator("#copy", has_text="Copied").wait_for()
        seen["clipboard"] = page.evaluate("navigator.clipboard.readText()")

        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {secret}"}) as api:
            seen["put"] = api.put("/api/v1/db/alice-example.test").status_code
            seen["get"] = api.get("/api/v1/db/alice-example.test").status_code
            seen["other_doc"] = api.put("/api/v1/db/bob-example.test").status_code

        page.goto(base + "/ui/tokens")
        seen["secret_shown_again"] = secret in page.content()
        seen["rows_before"] = page.locator("#tokens tbody tr").count()
        page.click("#tokens tbody tr form button")  # revoke
        page.wait_for_url(base + "/ui/tokens")
        seen["state_after_revoke"] = page.text_content("#tokens .pill")
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {secret}"}) as api:
            after = api.get("/api/v1/db/alice-example.test")
            seen["after_revoke"] = (after.status_code, after.headers.get("www-authenticate", ""))

        # a non-admin may not mint outside their namespace
        page.fill("#scopes", "*:admin.token")
        page.click("#create button[type=submit]")
        seen["refused_mint"] = page.text_content("#error")

        cookie = seen["cookies"][0]["value"]
        # Sign out ends the provider's session too (RP-initiated logout): the provider asks, then
        # sends the browser back to skald's signed-out page.
        page.click("text=Sign out")
        page.wait_for_url(re.compile("^" + re.escape(issuer) + "/session/end"))
        page.click("button[name=logout][value=yes]")
        page.wait_for_url(base + "/ui/signed-out")
        seen["signed_out"] = page.text_content("h1")
        with httpx.Client(base_url=base, cookies={"skald_session": cookie}) as old:
            seen["after_logout"] = old.get("/ui/tokens").status_code
        # signing in again asks for credentials: the provider no longer signs alice straight back in
        page.goto(base + "/ui/tokens")
        page.wait_for_url(re.compile(r".*/ui/login"))
        page.click("#oidc-login")
        page.wait_for_url(re.compile("^" + re.escape(issuer) + "/interaction/"))
        seen["provider_asks_again"] = page.locator("input[name=login]").count() == 1

        context.close()
    return seen


_FORM = re.compile(r'<form[^>]*action="([^"]+)"', re.I)
_INPUT = re.compile(r"<input([^>]*)>", re.I)
_ATTR = re.compile(r'(name|value)="([^"]*)"', re.I)


async def capture_callback(base: str, issuer: str, name: str) -> str:
    """Log in at the provider over plain HTTP and return the callback URL without delivering it."""
    callback = base + "/auth/callback"
    async with httpx.AsyncClient(follow_redirects=False, timeout=30) as http:
        method, url, data = "GET", base + "/auth/login", None
        for _ in range(20):
            response = await http.request(method, url, data=data)
            if response.is_redirect:
                location = urljoin(url, response.headers["location"])
                if location.startswith(callback):
                    return location
                method, url, data = "GET", location, None
                continue
            assert response.status_code == 200, (url, response.status_code, response.text[:300])
            action = _FORM.search(response.text)
            assert action, f"no form on {url}"
            fields: dict[str, str] = {}
            for attrs in _INPUT.findall(response.text):
                found = dict((k.lower(), v) for k, v in _ATTR.findall(attrs))
                if "name" in found:
                    fields[found["name"]] = found.get("value", "")
            if "login" in fields:
                fields.update(login=name, password="any-password")
            method, url, data = "POST", urljoin(url, html.unescape(action[1])), fields
    raise AssertionError("the provider never redirected back")


async def test_browser_login_mint_use_revoke(server: LiveServer, provider: str) -> None:
    seen = await trio.to_thread.run_sync(browser_flow, server.url, provider)
    assert seen["owner"] == "alice@example.test"
    [cookie] = seen["cookies"]
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Lax"
    assert cookie["secure"] is False  # cookie_secure is off for this plain-http test server
    assert seen["secret"].startswith("skd_")
    assert seen["clipboard"] == seen["secret"]  # the copy button works (under the page's CSP)
    assert seen["put"] == 201 and seen["get"] == 200
    assert seen["other_doc"] == 403
    assert seen["secret_shown_again"] is False
    assert seen["rows_before"] == 1
    assert seen["state_after_revoke"] == "revoked"
    status, challenge = seen["after_revoke"]
    assert status == 401 and challenge.startswith("Bearer")
    assert "only administrators" in (seen["refused_mint"] or "")
    assert seen["after_logout"] == 303  # the old cookie no longer signs anyone in
    assert seen["signed_out"] == "You are signed out"
    assert seen["provider_asks_again"]

    callback_url = await capture_callback(server.url, provider, "mallory")
    query = parse_qs(urlparse(callback_url).query)
    code, state = query["code"][0], query["state"][0]
    async with server.client(None, follow_redirects=False) as web:
        tampered = await web.get("/auth/callback", params={"code": code, "state": state[:-2] + "xy"})
        assert tampered.status_code == 400 and tampered.json()["code"] == "login_failed"
        good = await web.get("/auth/callback", params={"code": code, "state": state})
        assert good.status_code == 303, good.text
        assert "skald_session=" in good.headers["set-cookie"]
        assert "HttpOnly" in good.headers["set-cookie"] and "SameSite=Lax" in good.headers["set-cookie"]
        replay = await web.get("/auth/callback", params={"code": code, "state": state})
        assert replay.status_code == 400
        # the used code with a fresh, valid state: the provider refuses the code itself
        start = await web.get("/auth/login")
        assert start.status_code == 303
        fresh_state = parse_qs(urlparse(start.headers["location"]).query)["state"][0]
        reused = await web.get("/auth/callback?" + urlencode({"code": code, "state": fresh_state}))
        assert reused.status_code == 400 and reused.json()["code"] == "login_failed"

    async with server.client() as admin:
        events = (await admin.get("/api/v1/admin/audit", params={"limit": 500})).json()["events"]
    names = [e["event"] for e in events]
    assert {"login", "logout", "login.failed", "token.created", "token.revoked"} <= set(names)
    assert all(seen["secret"] not in str(e) for e in events)


async def test_id_token_checks_against_the_real_jwks(server: LiveServer, provider: str) -> None:
    async with httpx.AsyncClient() as http:
        jwks = (await http.get(provider + "/jwks")).json()

        async def signed(**overrides: Any) -> str:
            now = int(time.time())
            claims = {"iss": provider, "aud": "skald", "sub": "alice", "nonce": "n-1",
                      "iat": now, "exp": now + 300, **overrides}
            return (await http.post(provider + "/test/sign", json=claims)).text

        def check(token: str) -> dict[str, Any]:
            return verify_id_token(token, jwks, issuer=provider, client_id="skald", nonce="n-1")

        assert check(await signed())["sub"] == "alice"  # the same path accepts a correct token
        refusals = {
            "wrong audience": await signed(aud="someone-else"),
            "wrong audience list": await signed(aud=["someone-else", "another"]),
            "wrong nonce": await signed(nonce="n-2"),
            "wrong issuer": await signed(iss="http://127.0.0.1:1"),
            "expired": await signed(exp=int(time.time()) - 3600),
        }
        good = await signed()
        refusals["bad signature"] = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
        accepted = []
        for name, token in refusals.items():
            try:
                check(token)
            except LoginFailed:
                continue
            accepted.append(name)
        assert accepted == [], f"ID tokens accepted despite: {accepted}"
