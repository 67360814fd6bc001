"""Web sessions without a provider: cookie, CSRF, the token page's rules, login failures."""

from __future__ import annotations

import re
from pathlib import Path

import trio
from support.live import LiveServer, make_settings, start_live_server

from skald.auth.sessions import create_session, upsert_user
from skald.db.connection import DocConnection


async def signed_in(server: LiveServer, owner: str, is_admin: bool = False) -> tuple[str, str]:
    """Open a session directly in the service database; return (cookie value, csrf)."""

    def op(conn: DocConnection) -> tuple[str, str]:
        upsert_user(conn, owner=owner, issuer="http://idp", subject=owner, name=owner, is_admin=is_admin)
        session_id, session = create_session(conn, owner, is_admin)
        return session_id, session.csrf

    result: tuple[str, str] = await server.state.supervisor.service.write(op)
    return result


def files_containing(folder: Path, needles: list[str]) -> list[Path]:
    return [
        path for path in folder.rglob("*")
        if path.is_file() and any(n.encode() in path.read_bytes() for n in needles)
    ]


async def start(data_dir: Path, nursery: trio.Nursery) -> LiveServer:
    # Discovery happens only when a login starts; this issuer is never contacted except by that test.
    settings = make_settings(data_dir, oidc_issuer="http://127.0.0.1:9", oidc_client_id="skald")
    return await start_live_server(nursery, settings)


async def test_token_page_and_csrf(data_dir: Path, nursery: trio.Nursery) -> None:
    server = await start(data_dir, nursery)
    cookie, csrf = await signed_in(server, "alice@example.com")
    async with server.client(None, cookies={"skald_session": cookie}, follow_redirects=False) as web:
        page = await web.get("/ui/tokens")
        assert page.status_code == 200
        assert "alice@example.com" in page.text and f'value="{csrf}"' in page.text
        assert page.headers["cache-control"] == "no-store"
        # scripts only from skald's own files: no inline script can run, whatever a label holds
        assert "script-src 'self';" in page.headers["content-security-policy"]

        no_csrf = await web.post("/ui/tokens", data={"scopes": "alice-example.com:query.read"})
        assert no_csrf.status_code == 403 and no_csrf.json()["code"] == "csrf_failed"
        outside = await web.post("/ui/tokens", data={"csrf": csrf, "scopes": "bob:query.read"})
        assert outside.status_code == 403 and "only on alice-example.com" in outside.text
        bad = await web.post("/ui/tokens", data={"csrf": csrf, "scopes": "nonsense"})
        assert bad.status_code == 400

        made = await web.post("/ui/tokens", data={"csrf": csrf, "scopes": "alice-example.com:db.admin",
                                                  "label": "<script>x</script>", "expires": "1d"})
        assert made.status_code == 200
        secret = re.search(r'<code id="secret"[^>]*>(skd_[^<]+)</code>', made.text)
        assert secret, made.text
        assert "<script>x</script>" not in made.text  # labels are escaped
        token_id = re.search(r'data-token-id="(tok_[0-9a-f]+)"', made.text)
        assert token_id

        # the session authenticates API calls; writes need the CSRF header
        assert (await web.put("/api/v1/db/alice-example.com")).status_code == 401
        created = await web.put("/api/v1/db/alice-example.com", headers={"X-CSRF-Token": csrf})
        assert created.status_code == 201
        assert (await web.get("/api/v1/db/alice-example.com")).status_code == 200
        assert (await web.put("/api/v1/db/bob", headers={"X-CSRF-Token": csrf})).status_code == 403
        assert (await web.get("/api/v1/admin/tokens")).status_code == 403

    # another person cannot revoke alice's token
    bob_cookie, bob_csrf = await signed_in(server, "bob@example.com")
    async with server.client(None, cookies={"skald_session": bob_cookie}) as bob:
        r = await bob.post(f"/ui/tokens/{token_id[1]}/revoke", data={"csrf": bob_csrf})
        assert r.status_code == 404
    async with server.client(secret[1]) as api:
        assert (await api.get("/api/v1/db/alice-example.com")).status_code == 200

    # logout ends the session server-side
    async with server.client(None, cookies={"skald_session": cookie}, follow_redirects=False) as web:
        out = await web.post("/auth/logout", data={"csrf": csrf})
        assert out.status_code == 303
        assert 'skald_session=""' in out.headers["set-cookie"] or "Max-Age=0" in out.headers["set-cookie"]
        again = await web.get("/ui/tokens")
        assert again.status_code == 303 and again.headers["location"].startswith("/ui/login")

    # neither the session id nor the token's plaintext is stored anywhere in the data folder
    await server.stop()
    assert files_containing(data_dir, [cookie, bob_cookie, secret[1]]) == []


async def test_admin_session_uses_admin_api(data_dir: Path, nursery: trio.Nursery) -> None:
    server = await start(data_dir, nursery)
    cookie, csrf = await signed_in(server, "root@example.com", is_admin=True)
    async with server.client(None, cookies={"skald_session": cookie}) as web:
        assert (await web.get("/api/v1/admin/tokens")).status_code == 200
        made = await web.post("/api/v1/admin/tokens", json={"scopes": ["*:query.read"]},
                              headers={"X-CSRF-Token": csrf})
        assert made.status_code == 201
        assert made.json()["owner"] == "root@example.com"


async def test_login_failures_are_problem_json(data_dir: Path, nursery: trio.Nursery) -> None:
    server = await start(data_dir, nursery)
    async with server.client(None, follow_redirects=False) as web:
        assert (await web.get("/ui/tokens")).status_code == 303
        unknown = await web.get("/auth/callback", params={"code": "c", "state": "never-issued"})
        assert unknown.status_code == 400 and unknown.json()["code"] == "login_failed"
        denied = await web.get("/auth/callback", params={"error": "access_denied"})
        assert denied.status_code == 400
        unreachable = await web.get("/auth/login")
        assert unreachable.status_code == 502
        assert unreachable.json()["code"] == "oidc_provider_unavailable"
    async with server.client() as admin:
        events = (await admin.get("/api/v1/admin/audit", params={"event": "login.failed"})).json()["events"]
    assert len(events) == 2


async def test_without_oidc_the_pages_offer_token_sign_in(server: LiveServer) -> None:
    async with server.client(None, follow_redirects=False) as web:
        r = await web.get("/auth/login")
        assert r.status_code == 404 and r.json()["code"] == "oidc_not_configured"
        tokens = await web.get("/ui/tokens")
        assert tokens.status_code == 303 and tokens.headers["location"] == "/ui/login?next=%2Fui%2Ftokens"
        login = await web.get("/ui/login")
        assert login.status_code == 200 and 'id="token-login"' in login.text
        assert "/auth/login" not in login.text  # no single sign-on button without a provider
