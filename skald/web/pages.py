"""The document browser's pages under ``/ui/``, within the signed-in viewer's scopes.

Each page names the action it needs on its document (``query.read`` to browse, ``pub.subscribe``
for a topic tail, ``blob.read`` for blobs); the decision is :func:`skald.auth.scopes.decide`'s, as
for the API, and refusals are audited the same way. A skald error on a page is shown as an HTML page
with the same status and ``code`` (a browser user gets a page, not a JSON body).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import urlencode

from quart import Response, request

from skald.auth.guard import check_scope
from skald.auth.identity import CsrfFailed, SignedIn, login_redirect, signed_in
from skald.auth.scopes import Principal, decide
from skald.db.ids import validate_db_id
from skald.db.sqlscope import StatementClass
from skald.errors import SkaldError
from skald.http.context import request_ip
from skald.http.export import export_response
from skald.http.state import get_state
from skald.query.service import Authorize
from skald.web.render import render_page
from skald.web.service import FILTER_LABELS, PAGE_SIZE, DocumentBrowser, TableQuery

View = Callable[..., Awaitable[Response]]
MAX_LISTED = 200  # documents summarized on one page (each summary opens the document)


def _browser() -> DocumentBrowser:
    browser: DocumentBrowser = get_state().web
    return browser


async def visible_documents(principal: Principal) -> list[dict[str, Any]]:
    """Summaries of the documents the viewer may read (size, schema version, tables)."""
    browser = _browser()
    ids = [d for d in browser.document_ids()
           if principal.is_admin or any(fnmatchcase(d, s.db) for s in principal.scopes)]
    summaries = []
    for db_id in ids[:MAX_LISTED]:
        readable = decide(principal, db_id, "query.read").allowed
        summary = await browser.summary(db_id) if readable else {"db_id": db_id}
        summaries.append({**summary, "readable": readable})
    return summaries


def page(action: str | None) -> Callable[[View], View]:
    """A signed-in page; with ``action``, the viewer needs it on the page's ``db_id``."""

    def decorate(view: View) -> View:
        @functools.wraps(view)
        async def wrapper(**kwargs: Any) -> Response:
            if "db_id" in kwargs:
                try:  # a malformed id is a 400 for anyone, signed in or not (as on the API)
                    validate_db_id(kwargs["db_id"])
                except SkaldError as exc:
                    return await render_page("web/error.html", None, status=exc.status, title=exc.title, error=exc)
            signed = await signed_in()
            if signed is None:
                target = request.full_path.rstrip("?") if request.method == "GET" else request.path
                return login_redirect(target)
            try:
                if action is not None:
                    await check_scope(get_state(), signed.principal, kwargs["db_id"], action, None,
                                      path=request.path, ip=request_ip())
                return await view(signed, **kwargs)
            except SkaldError as exc:
                return await render_page("web/error.html", signed.viewer, status=exc.status, title=exc.title,
                                         error=exc)

        return wrapper

    return decorate


@page(None)
async def documents_page(signed: SignedIn) -> Response:
    docs = await visible_documents(signed.principal)
    return await render_page("web/documents.html", signed.viewer, title="Documents", documents=docs,
                             truncated=len(_browser().document_ids()) > MAX_LISTED)


def _may(signed: SignedIn, db_id: str, action: str) -> bool:
    return decide(signed.principal, db_id, action).allowed


def _abilities(signed: SignedIn, db_id: str) -> dict[str, bool]:
    return {a.replace(".", "_"): _may(signed, db_id, a)
            for a in ("query.write", "query.admin", "pub.subscribe", "blob.read", "jobs.admin")}


@page("query.read")
async def document_page(signed: SignedIn, db_id: str) -> Response:
    summary = await _browser().summary(db_id)
    return await render_page("web/document.html", signed.viewer, title=db_id, db_id=db_id, doc=summary,
                             may=_abilities(signed, db_id))


def _int_arg(name: str, default: int) -> int:
    value = request.args.get(name, "")
    return int(value) if value.isdigit() and len(value) < 10 else default


@page("query.read")
async def table_page(signed: SignedIn, db_id: str, table: str) -> Response:
    args = request.args
    view = TableQuery(
        sort=args.get("sort") or None, descending=args.get("desc") == "1",
        filter_column=args.get("column") or None, filter_op=args.get("op", "eq"),
        filter_value=args.get("value", ""), page=max(1, _int_arg("page", 1)),
    )
    result = await _browser().table_page(db_id, table, view)

    def link(**changes: Any) -> str:
        params = {"sort": view.sort, "desc": "1" if view.descending else None, "column": view.filter_column,
                  "op": view.filter_op if view.filter_column else None,
                  "value": view.filter_value if view.filter_column else None, "page": view.page}
        params.update(changes)
        kept = {k: v for k, v in params.items() if v is not None and v != "" and not (k == "page" and v == 1)}
        return "?" + urlencode(kept)

    return await render_page(
        "web/table.html", signed.viewer, title=f"{db_id} · {table}", db_id=db_id, page=result, link=link,
        filter_labels=FILTER_LABELS, page_size=PAGE_SIZE,
    )


def _statement_check(signed: SignedIn, db_id: str, *, write: bool) -> Authorize:
    """What a statement of each class needs here: the scope its class names, and for anything but a
    read, the SQL page's form (a POST with the CSRF token), never a link."""

    async def check(cls: StatementClass) -> None:
        if cls > StatementClass.READ and not write:
            raise CsrfFailed("statements that change the document run from the SQL page's Run button only")
        if cls > StatementClass.READ:
            await check_scope(get_state(), signed.principal, db_id, cls.action, None, path=request.path,
                              ip=request_ip())

    return check


async def _sql_page(signed: SignedIn, db_id: str, sql: str, *, write: bool) -> Response:
    """Run ``sql`` when given: reads from a link, writes only from the page's form."""
    result, error, status, cls = None, None, 200, None
    if sql.strip():
        try:
            cls, result = await _browser().run(db_id, sql, _statement_check(signed, db_id, write=write))
        except SkaldError as exc:
            error, status = exc, exc.status
    may_write = _may(signed, db_id, "query.write")
    return await render_page(
        "web/sql.html", signed.viewer, status=status, title=f"{db_id} · SQL", db_id=db_id, sql=sql,
        result=result, error=error, may_write=may_write, read_only=cls is None or cls == StatementClass.READ,
        export_query=urlencode({"sql": sql}),
    )


@page("query.read")
async def sql_page(signed: SignedIn, db_id: str) -> Response:
    return await _sql_page(signed, db_id, request.args.get("sql", ""), write=False)


@page("query.read")
async def sql_submit(signed: SignedIn, db_id: str) -> Response:
    form = await request.form
    if form.get("csrf") != signed.session.csrf:
        raise CsrfFailed("the form's CSRF token does not match your session; reload the page")
    return await _sql_page(signed, db_id, form.get("sql", ""), write=True)


@page("query.read")
async def export_page(signed: SignedIn, db_id: str) -> Response:
    """A read-only statement's result as a download: ``?format=csv|ndjson|json``."""
    fmt = request.args.get("format", "csv")
    if fmt not in ("csv", "ndjson", "json"):
        fmt = "csv"
    _, result = await _browser().run(db_id, request.args.get("sql", ""), _statement_check(signed, db_id, write=False))
    if fmt == "json":
        response = Response(_json_bytes(result.to_json()), content_type="application/json")
        response.headers["Content-Disposition"] = f'attachment; filename="{db_id}.json"'
        return response
    return export_response(fmt, result.columns, result.rows, truncated=result.truncated, filename=db_id)


def _json_bytes(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


@page("query.read")
async def live_page(signed: SignedIn, db_id: str) -> Response:
    """A query whose result updates in place (the page's script reads ``POST …/query/watch``)."""
    return await render_page("web/live.html", signed.viewer, title=f"{db_id} · live query", db_id=db_id,
                             sql=request.args.get("sql", ""))


@page("pub.subscribe")
async def topics_page(signed: SignedIn, db_id: str) -> Response:
    """A topic's messages, live (the page's script reads ``GET …/events/stream``), from an id if given."""
    since = request.args.get("since_id", "")
    return await render_page(
        "web/topics.html", signed.viewer, title=f"{db_id} · topics", db_id=db_id,
        topic=request.args.get("topic", "#"), since_id=since if since.isdigit() else "",
    )


@page("query.read")
async def webhooks_page(signed: SignedIn, db_id: str) -> Response:
    endpoint = request.args.get("endpoint") or None
    deliveries = await _browser().inbox(db_id, endpoint)
    return await render_page("web/webhooks.html", signed.viewer, title=f"{db_id} · webhooks", db_id=db_id,
                             deliveries=deliveries, endpoint=endpoint or "")


@page("query.read")
async def leases_page(signed: SignedIn, db_id: str) -> Response:
    leases = await _browser().leases(db_id)
    return await render_page("web/leases.html", signed.viewer, title=f"{db_id} · leases", db_id=db_id,
                             leases=leases)


@page("blob.read")
async def blobs_page(signed: SignedIn, db_id: str) -> Response:
    blobs = await _browser().blobs(db_id)
    return await render_page("web/blobs.html", signed.viewer, title=f"{db_id} · blobs", db_id=db_id,
                             blobs=blobs)


D = "/ui/db/<db_id>"
RULES: list[tuple[str, Any, list[str]]] = [
    ("/ui", documents_page, ["GET"]),
    (D, document_page, ["GET"]),
    (D + "/tables/<table>", table_page, ["GET"]),
    (D + "/sql", sql_page, ["GET"]),
    (D + "/sql", sql_submit, ["POST"]),
    (D + "/export", export_page, ["GET"]),
    (D + "/live", live_page, ["GET"]),
    (D + "/topics", topics_page, ["GET"]),
    (D + "/webhooks", webhooks_page, ["GET"]),
    (D + "/leases", leases_page, ["GET"]),
    (D + "/blobs", blobs_page, ["GET"]),
]
