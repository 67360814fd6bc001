"""The document-scoped relay routes of the JSON API, as one table.

They are served at the ASGI layer (:mod:`skald.legacy_relay`), not as Quart
views, so Quart's route table and quart-schema never see them. This table is
what the relay checks methods and scopes against, what ``/openapi.json`` lists
and what the authorization matrix test calls.
"""

from __future__ import annotations

import dataclasses
from typing import Any

PREFIX = "/api/v1/db/{db_id}/streams"


@dataclasses.dataclass(frozen=True)
class StreamRoute:
    kind: str  # queue | req | res
    method: str
    template: str  # OpenAPI path
    summary: str

    @property
    def action(self) -> str:
        return "stream.write" if self.method in ("POST", "PUT") else "stream.read"

    def serves(self, path: str) -> bool:
        """True if the part of the URL after ``…/{kind}/`` fits this route (``…/next`` for a consumer)."""
        literal = self.template.rsplit("}", 1)[1]  # what follows the last path variable: "/next" or ""
        return path.endswith(literal) and len(path) > len(literal)


_PRODUCE = "Stream the body to one waiting consumer (`?pubsub`: to every consumer waiting now); 200 once delivered"
_REQUEST = "Send a request to the responder on `{path}`; the response is the responder's answer (`Patch-Status`)"
_ANSWER = ("Answer the next request on `{path}` with this body (`Patch-Status`, `Patch-H-*`); "
           "`?switch`: the body names a queue topic whose next message answers instead")

ROUTES: tuple[StreamRoute, ...] = (
    StreamRoute("queue", "GET", f"{PREFIX}/queue/{{topic}}/next", "Wait for the next message on a topic; it streams"),
    StreamRoute("queue", "POST", f"{PREFIX}/queue/{{topic}}", _PRODUCE),
    StreamRoute("queue", "PUT", f"{PREFIX}/queue/{{topic}}", _PRODUCE),
    StreamRoute("req", "POST", f"{PREFIX}/req/{{path}}", _REQUEST),
    StreamRoute("req", "PUT", f"{PREFIX}/req/{{path}}", _REQUEST),
    StreamRoute("res", "GET", f"{PREFIX}/res/{{path}}", "Wait for the next request on `{path}`; it streams"),
    StreamRoute("res", "POST", f"{PREFIX}/res/{{path}}", _ANSWER),
    StreamRoute("res", "PUT", f"{PREFIX}/res/{{path}}", _ANSWER),
)


def route_for(kind: str, method: str) -> StreamRoute | None:
    return next((route for route in ROUTES if route.kind == kind and route.method == method), None)


def allowed_methods(kind: str, path: str) -> tuple[str, ...]:
    """The methods ``Allow`` lists for ``…/{kind}/{path}``: the routes that serve it, and ``OPTIONS``.

    Sorted, as the app sorts ``Allow`` for its own routes.
    """
    return tuple(sorted({"OPTIONS", *(route.method for route in ROUTES if route.kind == kind and route.serves(path))}))


def openapi_paths() -> dict[str, dict[str, Any]]:
    """OpenAPI path items for :data:`ROUTES` (bodies are opaque bytes both ways)."""
    binary = {"*/*": {"schema": {"type": "string", "format": "binary"}}}
    problem = {"application/problem+json": {"schema": {"type": "object"}}}
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        names = [part[1:-1] for part in route.template.split("/") if part.startswith("{")]
        operation: dict[str, Any] = {
            "summary": route.summary,
            "tags": ["streams"],
            "description": f"Needs a token with `{route.action}` on the document (resource prefix: the topic "
            "or path). Not durable: nothing is stored; see docs/compatibility.md.",
            "parameters": [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names],
            "responses": {
                "200": {"description": "the relayed message or answer", "content": binary},
                "401": {"description": "no valid token", "content": problem},
                "403": {"description": "the token's scopes do not allow this", "content": problem},
                "404": {"description": "no such document", "content": problem},
                "502": {"description": "the consumer left before it had the whole message", "content": binary},
            },
        }
        if route.method in ("POST", "PUT"):
            operation["requestBody"] = {"content": binary}
        if route.kind == "req":
            operation["responses"]["504"] = {"description": "a switched request got no answer in time",
                                             "content": problem}
        paths.setdefault(route.template, {})[route.method.lower()] = operation
    return paths
