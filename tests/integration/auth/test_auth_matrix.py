"""Authorization matrix: every route that declares an action x every kind of caller.

Routes are discovered from ``app.url_map`` at test time (views carrying
``skald_action``), plus the stream routes served ahead of Quart
(``skald.relay.stream_routes.ROUTES``), so routes added by later capabilities are
covered without editing this file. For each route and method the cases are: no token, unknown
token, expired, revoked (→ 401 with ``WWW-Authenticate: Bearer``), right
action on the wrong document, wrong action on the right document (→ 403) and
the right scope (→ anything but 401/403). Routes marked ``skald_action = "any"``
only need a valid token. Afterwards every file in the data folder is scanned
for the plaintext of every token minted.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import httpx
import trio
from quart_trio import QuartTrio
from support.live import ADMIN_TOKEN, LiveServer, make_settings, start_live_server

from skald.auth.scopes import ACTIONS, GLOBAL, Scope
from skald.auth.tokens import create_token
from skald.db.connection import DocConnection
from skald.relay import stream_routes

DOC = "matrixdoc"
OTHER_DOC = "elsewhere"
SKIP_METHODS = {"HEAD", "OPTIONS"}
# A right-scope request only has to get past authorization; a route that then waits
# (long poll, stream) has answered "not 401/403" by not refusing at once.
RESPONSE_BOUND_SECONDS = 5
# Stream routes always wait once authorized (nobody is on the other side); refusals come at once.
STREAM_BOUND_SECONDS = 1


@dataclasses.dataclass(frozen=True)
class RouteCase:
    rule: str
    method: str
    path: str
    action: str
    global_route: bool
    bound: float = RESPONSE_BOUND_SECONDS


def discover_routes(app: QuartTrio) -> list[RouteCase]:
    adapter = app.url_map.bind("localhost")
    cases: list[RouteCase] = []
    for rule in app.url_map.iter_rules():
        view = app.view_functions.get(rule.endpoint)
        action = getattr(view, "skald_action", None)
        if action is None:
            continue
        values: dict[str, str | int] = {}
        for name in rule.arguments:
            converter = type(rule._converters[name]).__name__
            if name == "db_id":
                values[name] = DOC
            elif converter in {"IntegerConverter", "FloatConverter"}:
                values[name] = 1
            elif converter == "PathConverter":
                values[name] = "sample/path"
            else:
                values[name] = "sample"
        for method in sorted((rule.methods or set()) - SKIP_METHODS):
            path = adapter.build(rule.endpoint, values, method=method)
            cases.append(RouteCase(rule.rule, method, path, action, "db_id" not in rule.arguments))
    for route in stream_routes.ROUTES:
        path = route.template.format(db_id=DOC, topic="sample", path="sample/path")
        cases.append(RouteCase(route.template, route.method, path, route.action, False, STREAM_BOUND_SECONDS))
    return cases


def wrong_action_for(action: str, db: str) -> str:
    """An action that does not grant ``action`` (nor is implied to)."""
    for candidate in ACTIONS:
        if not Scope(db, candidate).grants(db, action):
            return candidate
    raise AssertionError(f"no action fails to grant {action}")


@dataclasses.dataclass
class Callers:
    expired: str
    revoked: str
    wrong_db: str
    wrong_action: str
    right: str


async def mint_callers(server: LiveServer, action: str, global_route: bool, minted: list[str]) -> Callers:
    db = GLOBAL if global_route else DOC
    real_action = "query.read" if action == "any" else action
    wrong_db = "some-other-doc" if global_route else OTHER_DOC

    async def mint(scope: str, expires_at: str | None = None) -> str:
        parsed = [Scope.parse(scope)]

        def op(conn: DocConnection) -> str:
            secret, record = create_token(conn, scopes=parsed, label="matrix", owner="matrix")
            if expires_at:
                conn.execute("UPDATE tokens SET expires_at = ? WHERE id = ?", (expires_at, record.id))
            return secret

        secret: str = await server.state.supervisor.service.write(op)
        minted.append(secret)
        return secret

    # The revoked token goes through the admin API, as an operator would revoke it.
    async with server.client() as admin:
        body = {"scopes": [f"{db}:{real_action}"], "label": "rv"}
        r = await admin.post("/api/v1/admin/tokens", json=body)
        assert r.status_code == 201, r.text
        revoked = r.json()["token"]
        minted.append(revoked)
        assert (await admin.delete(f"/api/v1/admin/tokens/{r.json()['id']}")).status_code == 204
    return Callers(
        expired=await mint(f"{db}:{real_action}", expires_at="2000-01-01T00:00:00Z"),
        revoked=revoked,
        wrong_db=await mint(f"{wrong_db}:{real_action}"),
        wrong_action=await mint(f"{db}:{wrong_action_for(real_action, db)}"),
        right=await mint(f"{db}:{real_action}"),
    )


async def call(client: httpx.AsyncClient, case: RouteCase, token: str | None) -> int | None:
    """The response status, or None if the route accepted the request and is still waiting."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    kwargs: dict[str, Any] = {"headers": headers}
    if case.method in {"POST", "PUT", "PATCH"}:
        kwargs["json"] = {}
    with trio.move_on_after(case.bound):
        async with client.stream(case.method, case.path, **kwargs) as response:
            status = response.status_code
            if status == 401:
                assert response.headers.get("www-authenticate", "").startswith("Bearer"), case
            if status in {401, 403}:
                await response.aread()
                assert response.headers["content-type"] == "application/problem+json", case
            return status
    return None


async def test_every_route_refuses_what_the_token_does_not_allow(
    data_dir: Path, nursery: trio.Nursery
) -> None:
    settings = make_settings(data_dir, rate_limit_per_second=1_000_000.0, rate_limit_burst=1_000_000)
    server = await start_live_server(nursery, settings)
    cases = discover_routes(server.app)
    assert any(c.action == "admin.token" for c in cases), "admin routes must be in the matrix"
    assert any(not c.global_route for c in cases), "document routes must be in the matrix"
    assert any(c.action == "stream.write" for c in cases), "stream routes must be in the matrix"

    minted: list[str] = [ADMIN_TOKEN]
    callers: dict[tuple[str, bool], Callers] = {}
    failures: list[str] = []
    checked = 0
    async with server.client() as admin, server.client(None) as client:
        for case in cases:
            key = (case.action, case.global_route)
            if key not in callers:
                callers[key] = await mint_callers(server, case.action, case.global_route, minted)
            who = callers[key]
            unauth = [
                ("no token", None),
                ("unknown token", "skd_unknown_0123456789abcdefghijklmnopqrstuvwxyzABCD"),
                ("expired", who.expired),
                ("revoked", who.revoked),
            ]
            if case.action == "any":
                allowed = [
                    ("wrong db", who.wrong_db), ("wrong action", who.wrong_action), ("right", who.right)
                ]
                denied: list[tuple[str, str]] = []
            else:
                allowed = [("right", who.right)]
                denied = [("wrong db", who.wrong_db), ("wrong action", who.wrong_action)]
            expectations = [(n, t, "401") for n, t in unauth] + [(n, t, "403") for n, t in denied]
            expectations += [(n, t, "ok") for n, t in allowed]
            for name, token, expected in expectations:
                # Each request starts from an existing document (a DELETE case may have removed it).
                assert (await admin.put(f"/api/v1/db/{DOC}")).status_code in {200, 201}
                status = await call(client, case, token)
                checked += 1
                ok = status not in {401, 403} if expected == "ok" else status == int(expected)
                if not ok:
                    failures.append(
                        f"{case.method} {case.rule} [{case.action}] {name}: {status} != {expected}"
                    )
        # A token minted through the admin API shows its plaintext once: it must not be stored either.
        r = await admin.post("/api/v1/admin/tokens", json={"scopes": ["*:query.read"], "expires_in": "1d"})
        minted.append(r.json()["token"])
    print(f"authorization matrix: {len(cases)} route/method pairs x 7 cases = {checked} requests")
    assert not failures, "\n".join(failures)
    assert checked == len(cases) * 7

    await server.stop()
    assert_no_plaintext(data_dir, minted)


def assert_no_plaintext(data_dir: Path, secrets: list[str]) -> None:
    files = [p for p in data_dir.rglob("*") if p.is_file()]
    assert any(p.name == "_skald.db" for p in files)
    for path in files:
        content = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in content, f"plaintext token found in {path}"
