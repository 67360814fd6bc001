"""The Quart-trio application: wiring of state, lifespan, middleware and routes.

``create_app(settings)`` builds an app whose lifespan (``before_serving``)
starts the supervisor inside ``app.nursery`` and whose ``after_serving``
stops every actor after its queued work (so acknowledged writes are on disk
before the process exits).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, cast

import structlog
from quart import Response, request
from quart_schema import QuartSchema
from quart_schema.openapi import OpenAPIProvider
from quart_trio import QuartTrio
from werkzeug.wrappers.response import Response as WerkzeugResponse

from skald import __version__
from skald.auth import admin, audit_hooks, identity
from skald.auth.tokens import bootstrap_admin
from skald.blobs import routes as blobs
from skald.cluster import routes as cluster
from skald.config import Settings
from skald.db.connection import DocConnection
from skald.db.supervisor import Supervisor
from skald.documents import routes as documents
from skald.errors import InvalidJSON
from skald.http import openapi, operations, throttle
from skald.http.context import UNMATCHED, name_route
from skald.http.json_body import decode_json_body
from skald.http.pipeline import RequestPipeline
from skald.http.problem import install_error_handlers
from skald.http.state import AppState, get_state
from skald.jobs import routes as jobs
from skald.leases import routes as leases
from skald.libsql import routes as libsql
from skald.metrics import Metrics
from skald.mqtt import routes as mqtt
from skald.pubsub import routes as messages
from skald.query import routes as query
from skald.relay import legacy as legacy_relay
from skald.relay import stream_routes
from skald.relay.legacy import ASGIApp, LegacyRelay
from skald.sync import routes as sync
from skald.web import routes as web
from skald.webhooks import routes as webhooks

log = structlog.get_logger("skald.http.app")

Installer = Callable[[QuartTrio, AppState], None]

# Every capability, installed once per app in this order with (app, state). Imported normally, so a missing
# module fails the start with an ImportError instead of serving without its routes. Order matters where
# hooks stack: the admin audit's after_request sees each response the routes made. (The rate limiter's
# entry only builds it: the request pipeline, ahead of Quart and the relay, spends from it.)
INSTALLERS: tuple[Installer, ...] = (
    operations.install,
    documents.install,
    admin.install,
    throttle.install,
    audit_hooks.install,
    identity.install,
    query.install,
    libsql.install,
    messages.install,
    mqtt.install,
    webhooks.install,
    leases.install,
    blobs.install,
    sync.install,
    jobs.install,
    web.install,
    cluster.install,  # last: its forwarder wraps the app the others built; a no-op without cluster settings
)


_BaseRequest: Any = QuartTrio.request_class


class _Request(_BaseRequest):  # type: ignore[misc]
    """Quart's request, with every JSON body decoded by :func:`skald.http.json_body.decode_json_body`.

    Quart's own ``get_json`` decodes the body as UTF-8 outside its error handling and
    accepts lone surrogates, ``NaN`` and any nesting: each of those became a 500 later.
    quart-schema's ``validate_request`` calls this method too, so every route shares it.
    """

    async def get_json(self, force: bool = False, silent: bool = False, cache: bool = True) -> Any:
        if cache and self._cached_json[silent] is not Ellipsis:
            return self._cached_json[silent]
        if not (force or self.is_json):
            return None
        data = await self.get_data(cache=cache, as_text=False)
        try:
            result = decode_json_body(data)
        except InvalidJSON:
            if not silent:
                raise
            result = None
        if cache:
            self._cached_json[silent] = result
        return result

    def on_json_loading_failed(self, error: Exception) -> Any:
        raise InvalidJSON(f"request body is not valid JSON: {error}")


class _OpenAPIProvider(OpenAPIProvider):
    """quart-schema's document plus the stream routes served ahead of Quart (:mod:`skald.relay.stream_routes`)."""

    def schema(self) -> dict[str, Any]:
        # Every operation's responses, errors and parameters come from skald.http.openapi's table.
        return openapi.complete(super().schema(), stream_routes.openapi_paths())


class _App(QuartTrio):
    async def make_default_options_response(self) -> Response:
        """``OPTIONS``: ``204`` and ``Allow`` (Quart answers ``200`` with an empty ``text/html`` body).

        ``Allow`` is sorted, as the 405 handler sorts it: Quart lists a set, whose order varies per process.
        """
        quart_default = await super().make_default_options_response()
        methods = sorted(m.strip() for m in quart_default.headers.get("Allow", "").split(",") if m.strip())
        return Response("", status=204, headers={"Allow": ", ".join(methods)})


def create_app(settings: Settings, *, print_admin_token: bool = True) -> QuartTrio:
    app = _App("skald")
    app.request_class = _Request
    app.config["BACKGROUND_TASK_SHUTDOWN_TIMEOUT"] = settings.grace_seconds
    app.config["RESPONSE_TIMEOUT"] = None
    app.config["BODY_TIMEOUT"] = None
    app.json.sort_keys = False  # type: ignore[attr-defined]
    metrics = Metrics()
    state = AppState(settings=settings, metrics=metrics, supervisor=Supervisor(settings, metrics))
    app.extensions["skald"] = state
    QuartSchema(
        app,
        info={"title": "skald", "version": __version__},
        openapi_provider_class=_OpenAPIProvider,
        swagger_ui_path=None,
        redoc_ui_path=None,
        scalar_ui_path=None,
    )
    _skip_schema_conversion_of_plain_json(app)
    install_error_handlers(app)
    openapi.install_single_value_check(app)
    _install_lifespan(app, state, print_admin_token)
    _install_request_context(app, state)
    for install in INSTALLERS:
        install(app, state)
    # Relay paths stream at the ASGI layer, ahead of Quart (see skald.relay.legacy); the one request pipeline
    # runs ahead of both, so every request passes the same steps.
    relay = LegacyRelay(cast(ASGIApp, app.asgi_app), state)
    inner: ASGIApp = relay
    if state.cluster is not None and state.cluster.forwarder is not None:
        # On a cluster node, inside the pipeline and ahead of the relay: every document request (the relay's
        # stream routes included) goes to the node that owns the document.
        inner = state.cluster.forwarder.wrap(relay)
    app.asgi_app = RequestPipeline(inner, state, legacy_relay.is_legacy_path)  # type: ignore[method-assign,assignment]
    return app


def _skip_schema_conversion_of_plain_json(app: QuartTrio) -> None:
    """Answer a view's plain ``dict``/``list`` (alone or with a status) without quart-schema's conversion.

    quart-schema wraps ``make_response`` to turn models into JSON-ready values, and for a plain dict
    or list it builds a pydantic ``TypeAdapter`` for the type on every response: 3.6-6% of a request's
    CPU in py-spy profiles of /ping, INSERT and read (issue 17). skald's views return plain JSON
    values; anything else inside them (a model, a dataclass) is still encoded by the JSON provider
    quart-schema installs (it falls back to pydantic's ``to_jsonable_python``), and every other
    shape of result (headers, a model at the top) keeps quart-schema's path.
    """
    converting = app.make_response  # quart-schema's wrapper (an instance attribute)
    plain = functools.partial(QuartTrio.make_response, app)

    async def make_response(result: Any) -> Response | WerkzeugResponse:
        value = result[0] if type(result) is tuple and len(result) == 2 and type(result[1]) is int else result
        if type(value) is dict or type(value) is list:
            return await plain(result)
        return await converting(result)

    app.make_response = make_response  # type: ignore[method-assign]


def _install_lifespan(app: QuartTrio, state: AppState, print_admin_token: bool) -> None:
    @app.before_serving
    async def start_runtime() -> None:
        await app.nursery.start(state.supervisor.serve)
        secret = state.settings.admin_token

        def bootstrap(conn: DocConnection) -> str | None:
            return bootstrap_admin(conn, secret)

        plaintext = await state.supervisor.service.write(bootstrap)
        if plaintext and print_admin_token:
            # Printed exactly once, on the first start with an empty token table; never logged.
            print(
                f"\nskald: created the admin token (shown once, store it now):\n\n    {plaintext}\n",
                file=sys.stderr,
                flush=True,
            )
        state.bootstrap_admin_token = plaintext
        log.info("skald ready", data_dir=str(state.settings.data_dir), version=__version__)

    @app.after_serving
    async def stop_runtime() -> None:
        state.shutdown.begin()  # without hypercorn (app.test_app()) nobody began it yet
        await state.supervisor.aclose()
        log.info("skald stopped")


def _install_request_context(app: QuartTrio, state: AppState) -> None:
    # Request id, shutdown refusal, rate limit, metrics and the access log are the pipeline's (RequestPipeline,
    # ahead of Quart); Quart only names the route that answered and shapes its response.
    @app.before_request
    async def name_the_route() -> None:
        rule = request.url_rule.rule if request.url_rule is not None else UNMATCHED
        name_route(request.scope, rule,  # type: ignore[arg-type]  # quart types its scope as a TypedDict
                   (request.view_args or {}).get("db_id"))

    @app.after_request
    async def no_type_without_body(response: Response) -> Response:
        if response.status_code in (204, 304):
            # No body, so no type: Quart labels an empty body text/html, which a 204 must not claim.
            response.headers.pop("Content-Type", None)
        return response


__all__ = ["create_app", "get_state"]
