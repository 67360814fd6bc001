"""The API contract ``/openapi.json`` publishes, one entry per operation.

quart-schema builds the skeleton from the route table (paths, path parameters,
the pydantic request models of the query routes). It cannot know what a view
returns or which errors it raises, so every operation is described here: its
success responses with their schemas, the RFC 9457 problems it can answer with
(status and the stable ``code`` values under each, validated against the shared
``ProblemDetails`` schema), its query parameters and whether a body is required.

:func:`complete` merges the table into the generated document and fails loudly
when a route has no entry (or an entry no route), so a new route cannot ship
undocumented. ``tests/contract`` fuzzes the result with schemathesis against a
live server: a response outside what is declared here fails CI.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any

from quart import Quart, request

from skald.auth.scopes import ACTIONS
from skald.auth.tokens import MAX_LIFETIME
from skald.blobs.service import MAX_SINGLE_PUT_BYTES
from skald.errors import PROBLEM_CONTENT_TYPE, ValidationFailed
from skald.http.params import HEARTBEAT_MAX_SECONDS, HEARTBEAT_MIN_SECONDS
from skald.jobs.model import PRIORITIES as JOB_PRIORITIES
from skald.jobs.model import QUEUE_PATTERN as JOB_QUEUE_PATTERN
from skald.jobs.model import STATES as JOB_STATES

Schema = dict[str, Any]
Errors = Mapping[int, Iterable[str]]

PROBLEM_REF = {"$ref": "#/components/schemas/ProblemDetails"}

PROBLEM_DETAILS: Schema = {
    "type": "object",
    "description": "RFC 9457 problem details; `code` is stable, match on it (not on `title` or `detail`).",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string", "description": "https://skald.dev/problems/{code}"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "instance": {"type": "string", "description": "the request path"},
        "retry_after": {"type": "integer", "description": "429: seconds to wait (also in `Retry-After`)"},
        "limit": {"type": "integer", "description": "413: the limit that was exceeded"},
        "errors": {"type": "array", "items": {"type": "object"}, "description": "validation_failed: each field"},
    },
}

# Path parameters the server validates by pattern: declaring the pattern makes "schema-valid" mean
# "accepted by the server", so a fuzzer's valid ids reach the view and its invalid ones are refused.
# (no "..": a dot is followed by a non-dot or ends the id)
_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*\.?$"
PATH_PARAMETERS: dict[str, Schema] = {
    "db_id": {"type": "string", "pattern": _NAME_PATTERN, "minLength": 1, "maxLength": 128},
    "endpoint": {"type": "string", "pattern": _NAME_PATTERN, "minLength": 1, "maxLength": 128},
    "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    "token_id": {"type": "string", "minLength": 1},
    "topic": {"type": "string", "minLength": 1},
    "path": {"type": "string", "minLength": 1},
    "job_id": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},  # a larger one names no job (404)
    "queue": {"type": "string", "pattern": JOB_QUEUE_PATTERN},
}

# ---- error sets ----------------------------------------------------------------------------------
# Every route may meet these on the way in: the rate limiter, the refusal during shutdown, and the
# connection bounds (a request head that took too long, a connection over `max_connections`).
_ANY: Errors = {
    408: ["request_head_timeout"],
    429: ["rate_limited"],
    503: ["shutting_down", "too_many_connections"],
}
# A route that authenticates a bearer token (or a signed-in session) and checks a scope.
_AUTH: Errors = {401: ["unauthenticated", "token_invalid"], 403: ["scope_denied"]}
# A route under /api/v1/db/{db_id}: the id is checked, the document must exist, its actor may be busy.
# `not_found` is the router's: a path parameter holding `/` no longer matches the route.
_DOC: Errors = {
    400: ["invalid_db_id"],
    404: ["document_not_found", "not_found"],
    503: ["mailbox_full", "document_unavailable"],
}
# A route that reads a JSON body.
_JSON: Errors = {400: ["invalid_json", "validation_failed"], 413: ["payload_too_large"]}
_QUERY: Errors = {400: ["validation_failed"]}  # integer query parameters out of range or not integers
_SQL: Errors = {
    400: [
        "invalid_argument", "multiple_statements", "empty_statement", "sql_error", "query_timeout", "value_too_large",
    ],
    403: ["statement_forbidden"],
    409: ["constraint_violation", "stale_fence", "transaction_rolled_back"],
}
_STORAGE: Errors = {
    503: ["object_storage_unconfigured", "object_storage_unavailable"],
    400: ["validation_failed"],
}


def merge(*sets: Errors) -> dict[int, list[str]]:
    merged: dict[int, list[str]] = {}
    for errors in sets:
        for status, codes in errors.items():
            bucket = merged.setdefault(status, [])
            bucket.extend(code for code in codes if code not in bucket)
    return merged


def problem_responses(errors: Errors) -> dict[str, Any]:
    """One response per status; its schema pins ``code`` to the codes this operation can return."""
    responses: dict[str, Any] = {}
    for status, codes in sorted(merge(errors).items()):
        schema = {
            "allOf": [PROBLEM_REF, {"properties": {"status": {"const": status}, "code": {"enum": codes}}}]
        }
        responses[str(status)] = {
            "description": "problem: " + ", ".join(f"`{code}`" for code in codes),
            "content": {PROBLEM_CONTENT_TYPE: {"schema": schema}},
        }
    return responses


# ---- schema helpers ------------------------------------------------------------------------------

STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NUM: Schema = {"type": "number"}
BOOL: Schema = {"type": "boolean"}
ANY: Schema = {}
NULL_STR: Schema = {"type": ["string", "null"]}
NULL_INT: Schema = {"type": ["integer", "null"]}
NULL_NUM: Schema = {"type": ["number", "null"]}
SHA256: Schema = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
INT64_MAX = 2**63 - 1  # integer query parameters are bounded by SQLite's range (400 beyond it)


def count(minimum: int = 0, maximum: int = INT64_MAX) -> Schema:
    return {"type": "integer", "minimum": minimum, "maximum": maximum}


def obj(required: Mapping[str, Schema], optional: Mapping[str, Schema] | None = None, *,
        closed: bool = False) -> Schema:
    """An object schema; ``closed`` only where the server refuses unknown fields."""
    schema: Schema = {"type": "object", "properties": {**required, **(optional or {})}}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    return schema


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def json_body(schema: Schema) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def query_param(name: str, schema: Schema, description: str = "", **extra: Any) -> dict[str, Any]:
    param = {"name": name, "in": "query", "required": False, "schema": schema, **extra}
    if description:
        param["description"] = description
    return param


# ---- response shapes -----------------------------------------------------------------------------

SCOPE = obj({"db": STR, "action": STR}, {"resource_prefix": NULL_STR})
TOKEN = obj({
    "id": STR, "label": STR, "owner": STR, "scopes": array(SCOPE), "created_at": STR,
    "expires_at": NULL_STR, "revoked_at": NULL_STR, "last_used_at": NULL_STR,
    "state": {"type": "string", "enum": ["active", "expired", "revoked"]},
})
MINTED = {**TOKEN, "required": [*TOKEN["required"], "token"],
          "properties": {**TOKEN["properties"], "token": {"type": "string", "description": "shown once"}}}
AUDIT_EVENT = obj({"id": INT, "at": STR, "event": STR, "actor": NULL_STR, "subject": NULL_STR,
                   "detail": ANY, "ip": NULL_STR}, {"node": NULL_STR})  # node: on a cluster, who recorded it
DOCUMENT = obj({
    "db_id": STR, "size_bytes": INT, "wal_bytes": INT, "page_count": INT, "page_size": INT,
    "schema_version": INT, "created_at": NULL_STR, "tables": array(STR), "latest_schema_version": INT,
})
QUERY_RESULT = obj({
    "columns": array(STR), "rows": array(array(ANY)), "row_count": INT, "truncated": BOOL,
    "changes": INT, "last_insert_rowid": NULL_INT,
})
MESSAGE = obj({"id": INT, "topic": STR, "content_type": NULL_STR, "created_at": STR},
              {"payload": ANY, "payload_text": STR, "payload_base64": STR})
RETENTION = obj({"max_age_seconds": NULL_NUM, "max_count": NULL_INT, "max_bytes": NULL_INT})
LEASE = obj({"resource": STR, "owner": STR, "fence": INT, "ttl_seconds": NUM, "expires_at": STR},
            {"lease_token": STR})
VERIFY_OUT = obj({"style": STR, "secret": STR}, {
    "header": NULL_STR, "algorithm": STR, "encoding": STR, "prefix": STR, "tolerance_seconds": INT,
})
WEBHOOK_CONFIG = obj({"endpoint": STR, "verify": {"anyOf": [VERIFY_OUT, {"type": "null"}]},
                      "redact_headers": array(STR)})
CHANGE = obj({"seq": INT, "table": STR, "op": STR})


def sse(*events: str) -> dict[str, Any]:
    """An event stream; schemathesis checks each event (``event``, ``data``, ``id``) against the schema."""
    event = obj({"event": {"enum": list(events)}, "data": STR}, {"id": STR, "retry": STR})
    return {"text/event-stream": {"schema": event}}


HTML = {"text/html": {"schema": {"type": "string"}}}


NDJSON_ACK: Schema = {"type": "object", "required": ["line"],
                      "properties": {"line": {"type": "integer", "minimum": 1}, "problem": PROBLEM_REF}}


def ndjson_acks(description: str) -> dict[str, Any]:
    """An NDJSON stream of acknowledgements (skald.http.ndjson), described as the array of its lines."""
    return {"200": {"description": description,
                    "content": {"application/x-ndjson": {"schema": array(NDJSON_ACK)}}}}


def ndjson_body(line: Schema, description: str) -> dict[str, Any]:
    """An NDJSON request body: one JSON value per line. Each line is validated on its own and a bad
    one is answered *in the stream* (its acknowledgement carries the problem; the request is
    still 200), so at the request level any lines are acceptable: ``line`` is documentation,
    under ``x-line-schema``, not a constraint a fuzzer should expect a 4xx for."""
    return {"description": description,
            "content": {"application/x-ndjson": {"schema": {"description": "one JSON value per line",
                                                            "x-line-schema": line}}}}


def ok(schema: Schema, description: str = "success", status: int = 200) -> dict[str, Any]:
    return {str(status): {"description": description, "content": {"application/json": {"schema": schema}}}}


def no_content(description: str = "done; no body") -> dict[str, Any]:
    return {"204": {"description": description}}


def redirect(description: str) -> dict[str, Any]:
    return {"303": {"description": description, "headers": {"Location": {"schema": STR}}}}


# ---- the table -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Op:
    responses: dict[str, Any]  # success responses, by status
    errors: Errors
    body: dict[str, Any] | None = None  # a request body object (None: keep quart-schema's, if any)
    body_required: bool = True
    query: tuple[dict[str, Any], ...] = ()
    auth: bool = True  # bearer token (or session) required

    def apply(self, operation: dict[str, Any]) -> None:
        responses = dict(self.responses)
        for status, problem in problem_responses(merge(_ANY, self.errors)).items():
            own = responses.get(status, {}).get("content")
            # A status that is both a problem and a page of its own (the web face's HTML 400) lists both.
            responses[status] = {**problem, "content": {**problem["content"], **own}} if own else problem
        operation["responses"] = responses
        if self.body is not None:
            operation["requestBody"] = self.body
        if "requestBody" in operation:
            operation["requestBody"] = {**operation["requestBody"], "required": self.body_required}
        params = [p for p in operation.get("parameters", []) if p.get("in") != "query"]
        for param in params:
            if param.get("in") == "path" and param["name"] in PATH_PARAMETERS:
                param["schema"] = PATH_PARAMETERS[param["name"]]
        operation["parameters"] = params + list(self.query)
        operation["security"] = [{"bearer": []}] if self.auth else []


D = "/api/v1/db/{db_id}"
LIMIT = "at most this many (1 or more)"
# A segment: no `/`, no wildcard, no control character (U+0000-U+001F, U+007F-U+009F).
_SEGMENT = "[^/+#\\u0000-\\u001f\\u007f-\\u009f]+"
TOPIC: Schema = {"type": "string", "minLength": 1, "maxLength": 255, "pattern": f"^{_SEGMENT}(/{_SEGMENT})*$"}
_FILTER_SEGMENT = f"({_SEGMENT}|[+])"
PUBLISH = obj({"topic": TOPIC}, {
    "payload": ANY, "payload_text": STR, "payload_base64": {"type": "string", "format": "byte"},
    "content_type": {"type": ["string", "null"], "maxLength": 255},
    "dedupe_key": {"type": ["string", "null"], "minLength": 1, "maxLength": 255},
}) | {"description": "exactly one of payload, payload_text, payload_base64",
      "oneOf": [{"required": [key]} for key in ("payload", "payload_text", "payload_base64")],
      "not": {"required": ["messages"]}}  # a body with `messages` is a batch
PUBLISHED_BATCH = obj({"ids": array(INT)}, {"deduplicated": array(INT)})
TOPIC_FILTER: Schema = {"type": "string", "minLength": 1, "maxLength": 255,
                        "pattern": f"^({_FILTER_SEGMENT}(/{_FILTER_SEGMENT})*(/#)?|#)$"}
_TOPIC_FILTERS = query_param(
    "topic", array(TOPIC_FILTER),
    "topic filter (`+` one segment, `#` the rest); repeat for several", style="form", explode=True,
)
_SINCE_ID = query_param("since_id", count(), "messages with a greater id")
_DB_JSON = merge(_AUTH, _DOC, _JSON)
_TTL = {"type": ["number", "null"], "minimum": 1, "maximum": 3600, "description": "default 30"}
_BLOB_BODY = obj({"sha256": SHA256})
_BLOB_REF = obj({"sha256": SHA256, "ref": {"type": "string", "minLength": 1, "maxLength": 512}})
_VERIFY_FIELDS: dict[str, Schema] = {
    "secret": {"type": "string", "minLength": 1}, "header": {"type": ["string", "null"], "minLength": 1},
    "algorithm": {"enum": ["sha1", "sha256", "sha512"]}, "encoding": {"enum": ["hex", "base64"]},
    "prefix": STR, "tolerance_seconds": {"type": "integer", "minimum": 1},
}


def _verify(style: Schema, **overrides: Schema) -> Schema:
    fields = {**_VERIFY_FIELDS, **overrides}
    required = {"style": style, "secret": fields.pop("secret")}
    if "header" in overrides:
        required["header"] = fields.pop("header")
    return obj(required, fields, closed=True)


# hmac needs a header; a Standard Webhooks secret is `whsec_` and base64 (the server checks both).
_VERIFY_IN: Schema = {"anyOf": [
    _verify({"enum": ["github", "stripe"]}),
    _verify({"const": "hmac"}, header={"type": "string", "minLength": 1}),
    _verify({"const": "standard"}, secret={
        "type": "string", "minLength": 1,
        "pattern": "^(whsec_)?([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"}),
]}

def _at_most(limit: int) -> str:
    """A regex for the decimal integers 0..``limit`` (leading zeros allowed, as ``int()`` takes them)."""
    digits = str(limit)
    shorter = [f"[0-9]{{1,{len(digits) - 1}}}"] if len(digits) > 1 else []
    same_length = []  # the limit's first i digits, a smaller digit, then any digits
    for i, d in enumerate(digits):
        if d != "0":
            rest = len(digits) - i - 1
            smaller = f"[0-{int(d) - 1}]" if d != "1" else "0"
            same_length.append(digits[:i] + smaller + (f"[0-9]{{{rest}}}" if rest else ""))
    return "0*(" + "|".join([*shorter, *same_length, digits]) + ")"


def _lifetime_pattern() -> str:
    """``30d``-style lifetimes up to the server's cap (:data:`skald.auth.tokens.MAX_LIFETIME`), exactly."""
    cap = int(MAX_LIFETIME.total_seconds())
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    return "^(" + "|".join(f"{_at_most(cap // size)}{unit}" for unit, size in units.items()) + ")$"


_ACTION = {"enum": [*ACTIONS, "*"]}
_MINT = obj(
    {"scopes": {"type": "array", "minItems": 1, "items": {"anyOf": [
        obj({"db": {"type": "string", "minLength": 1}, "action": _ACTION},
            {"resource_prefix": NULL_STR}),
        {"type": "string", "pattern": "^[^:]+:(" + "|".join(a.replace(".", "[.]") for a in ACTIONS) + "|[*])(:.*)?$",
         "description": "`DB:ACTION[:PREFIX]`"},
    ]}}},
    {"label": {"type": "string", "maxLength": 200}, "owner": {"type": ["string", "null"], "maxLength": 200},
     "expires_in": {"type": ["string", "null"], "pattern": _lifetime_pattern(),
                    "description": "lifetime like `30d`, `12h`, `15m`, at most 36500 days; null = never"}},
) | {"title": "CreateTokenRequest"}  # skald.auth.admin's model, with the patterns its validators enforce


# ---- job queues (skald.jobs; docs/jobs.md) ---------------------------------------------------------
# Optional fields: null means "not given" on the server, so each admits null here too.


def _opt(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _num(minimum: float, maximum: float) -> Schema:
    return {"type": "number", "minimum": minimum, "maximum": maximum}


def _int(minimum: int, maximum: int) -> Schema:
    return {"type": "integer", "minimum": minimum, "maximum": maximum}


def _text(limit: int = 256) -> Schema:
    return {"type": "string", "minLength": 1, "maxLength": limit}


def _one_or_many(schema: Schema) -> Schema:
    return _opt({"anyOf": [schema, {"type": "array", "minItems": 1, "maxItems": 100, "items": schema}]})


_SECONDS = 366 * 86400
_JOB_ID = _int(1, INT64_MAX)
_QUEUE_NAME: Schema = {"type": "string", "pattern": JOB_QUEUE_PATTERN}
_PRIORITY: Schema = {"enum": list(JOB_PRIORITIES)}
_JOB_STATE: Schema = {"enum": list(JOB_STATES)}
_TIME: Schema = {"type": "string", "format": "date-time", "description": "RFC 3339"}
_BACKOFF: Schema = obj({}, {"strategy": {"enum": ["none", "fixed", "linear", "exponential"]},
                            "base_seconds": NUM, "max_seconds": NUM})
_BACKOFF_IN: Schema = _opt(obj({}, {"strategy": _opt({"enum": ["none", "fixed", "linear", "exponential"]}),
                                    "base_seconds": _opt(_num(0, _SECONDS)),
                                    "max_seconds": _opt(_num(0, _SECONDS))}))
JOB = obj({
    "id": INT, "queue": STR, "state": _JOB_STATE, "priority": _PRIORITY, "payload": ANY, "run_at": STR,
    "created_at": STR, "started_at": NULL_STR, "completed_at": NULL_STR, "attempts": INT, "max_attempts": INT,
    "backoff": _BACKOFF, "unique_key": NULL_STR, "tags": array(STR), "timeout_seconds": NULL_NUM,
    "worker_id": NULL_STR, "lease_expires_at": NULL_STR, "progress": ANY, "checkpoint": ANY, "result": ANY,
    "cancel_requested": BOOL, "error_count": INT, "last_error": NULL_STR,
})
_JOB_ERROR = obj({"attempt": INT, "error": STR, "backtrace": NULL_STR, "at": STR})
_JOB_WITH_ERRORS = {**JOB, "properties": {**JOB["properties"], "errors": array(_JOB_ERROR)}}
_ENQUEUED = {**JOB, "properties": {**JOB["properties"], "duplicate": BOOL}}
_FETCHED = {**JOB, "properties": {**JOB["properties"], "attempt": INT,
                                  "lease": obj({"token": STR, "fence": INT, "expires_at": STR})}}
_JOB_IN = obj({"queue": _QUEUE_NAME}, {
    "payload": ANY, "priority": _opt(_PRIORITY), "run_at": _opt(_TIME), "max_attempts": _opt(_int(1, 1000)),
    "backoff": _BACKOFF_IN, "unique_key": _opt(_text()), "unique_for_seconds": _opt(_num(0, _SECONDS)),
    "tags": _opt({"type": "array", "maxItems": 32, "items": _text()}), "timeout_seconds": _opt(_num(1, _SECONDS)),
})
_JOB_FILTER = obj({}, {
    "queue": _one_or_many(_QUEUE_NAME), "state": _one_or_many(_JOB_STATE), "priority": _one_or_many(_PRIORITY),
    "tags": _opt({"type": "array", "maxItems": 32, "items": _text()}),
    "payload_contains": _opt({"anyOf": [_text(4096), {"type": "object"}]}),
    "ids": _opt({"type": "array", "maxItems": 10000, "items": _JOB_ID}),
    "attempts_min": _opt(_int(0, 1_000_000)), "attempts_max": _opt(_int(0, 1_000_000)),
    "unique_key": _opt(_text()), "worker_id": _opt(_text()), "has_errors": _opt(BOOL),
    "error_contains": _opt(_text(4096)), "id_prefix": _opt({"type": "string", "pattern": "^[0-9]{1,19}$"}),
    **{f"{t}_{side}": _opt(_TIME) for t in ("created", "run_at", "started", "completed")
       for side in ("before", "after")},
}, closed=True)
_QUEUE_INFO = obj({"name": STR, "paused": BOOL, "concurrency": NULL_INT,
                   "throttle": {"anyOf": [obj({"rate": INT, "window_seconds": NUM}), {"type": "null"}]},
                   "counts": {"type": "object", "additionalProperties": INT}})
_LEASE_IN = {"lease": _text()}
_LEASE_SECONDS = _opt(_num(1, 3600))
_JOB_PATH = merge(_AUTH, _DOC, {404: ["job_not_found"]})
_JOB_JSON = merge(_DB_JSON, {404: ["job_not_found"]})
_REMOVED = ok(obj({"queue": STR, "deleted": INT}))
_PER_JOB = obj({"id": INT, "ok": BOOL}, {"state": STR, "lease_expires_at": STR, "cancel": BOOL, "code": STR,
                                         "detail": STR})
# bulk: by ids or by a filter (exactly one); move needs a queue, priority a priority
_BULK: Schema = {
    "type": "object",
    "required": ["action"],
    "properties": {"action": {"enum": ["retry", "requeue", "delete", "cancel", "move", "priority"]},
                   "ids": {"type": "array", "maxItems": 10000, "items": _JOB_ID}, "filter": _JOB_FILTER,
                   "queue": _QUEUE_NAME, "priority": _PRIORITY},
    "allOf": [
        {"oneOf": [{"required": ["ids"]}, {"required": ["filter"]}]},
        {"anyOf": [{"properties": {"action": {"enum": ["retry", "requeue", "delete", "cancel"]}}},
                   {"properties": {"action": {"const": "move"}}, "required": ["queue"]},
                   {"properties": {"action": {"const": "priority"}}, "required": ["priority"]}]},
    ],
}


def _job_operations() -> dict[tuple[str, str], Op]:
    j = D + "/jobs"
    state_conflict = {409: ["job_state_conflict"]}
    return {
        ("POST", j): Op({**ok(_ENQUEUED, "enqueued", 201), **ok(_ENQUEUED, "a live job has this unique_key")},
                        _DB_JSON, body=json_body(_JOB_IN)),
        ("POST", j + "/batch"): Op(
            {**ok(obj({"jobs": array(_ENQUEUED)}), "enqueued, all or none", 201),
             **ok(obj({"jobs": array(_ENQUEUED)}), "every job was a duplicate")},
            _DB_JSON, body=json_body(obj({"jobs": {"type": "array", "minItems": 1, "maxItems": 1000,
                                                   "items": _JOB_IN}}))),
        ("POST", j + "/stream"): Op(
            ndjson_acks("one line per input line, in order, once its enqueue committed: `{line, id, queue, state, "
                        "duplicate}` or `{line, problem}`"),
            merge(_AUTH, _DOC),
            body=ndjson_body(_JOB_IN, "one job per line, as `POST …/jobs` takes it"), body_required=False,
        ),
        ("POST", j + "/work"): Op(
            ndjson_acks("one line per input line, in order, each after the one before: `{line, acks: [{id, ok, "
                        "state | code, detail}], jobs: [job with lease]}` or `{line, problem}`"),
            merge(_AUTH, _DOC),
            body=ndjson_body(obj(
                {"queues": {"type": "array", "minItems": 1, "maxItems": 100, "items": _QUEUE_NAME},
                 "worker_id": _text()},
                {"lease_seconds": _LEASE_SECONDS, "wait_seconds": _opt(_num(0, 60)),
                 "max_jobs": _opt(_int(0, 100)),
                 "ack": {"type": "array", "maxItems": 1000,
                         "items": obj({"id": _JOB_ID, **_LEASE_IN}, {"result": ANY})}}, closed=True),
                "a worker's step per line: ack the jobs it finished and claim up to `max_jobs` more (0: none), "
                "in one commit"),
            body_required=False,
        ),
        ("POST", j + "/fetch"): Op(
            {**ok({"anyOf": [_FETCHED, obj({"jobs": array(_FETCHED)})]},
                  "a job, now running under `lease` (with `max_jobs`: `{\"jobs\": [...]}`)"),
             **no_content("nothing came within wait_seconds")},
            _DB_JSON, body=json_body(obj(
                {"queues": {"type": "array", "minItems": 1, "maxItems": 100, "items": _QUEUE_NAME},
                 "worker_id": _text()},
                {"lease_seconds": _LEASE_SECONDS, "wait_seconds": _opt(_num(0, 60)),
                 "max_jobs": _opt(_int(1, 100))}))),
        ("POST", j + "/ack"): Op(
            ok(obj({"jobs": array(_PER_JOB)})), _DB_JSON,
            body=json_body(obj({"jobs": {"type": "array", "minItems": 1, "maxItems": 1000,
                                         "items": obj({"id": _JOB_ID, **_LEASE_IN}, {"result": ANY})}}))),
        ("POST", j + "/heartbeat"): Op(
            ok(obj({"jobs": array(_PER_JOB)})), _DB_JSON,
            body=json_body(obj(
                {"worker_id": _text(),
                 "jobs": {"type": "array", "maxItems": 1000, "items": obj(
                     {"id": _JOB_ID, **_LEASE_IN}, {"progress": ANY, "checkpoint": ANY})}},
                {"lease_seconds": _LEASE_SECONDS}))),
        ("POST", j + "/{job_id}/ack"): Op(ok(JOB), merge(_JOB_JSON, {409: ["job_lease_mismatch"]}),
                                          body=json_body(obj(_LEASE_IN, {"result": ANY}))),
        ("POST", j + "/{job_id}/fail"): Op(
            ok(JOB, "the job: `retrying` (after its backoff), `dead` or `cancelled`"),
            merge(_JOB_JSON, {409: ["job_lease_mismatch"]}),
            body=json_body(obj({**_LEASE_IN, "error": _text(65536)},
                               {"backtrace": _opt(_text(65536)), "checkpoint": ANY}))),
        ("GET", j + "/{job_id}"): Op(ok(_JOB_WITH_ERRORS), _JOB_PATH),
        ("DELETE", j + "/{job_id}"): Op(no_content("deleted"), _JOB_PATH),
        ("POST", j + "/{job_id}/retry"): Op(ok(JOB), merge(_JOB_PATH, state_conflict)),
        ("POST", j + "/{job_id}/cancel"): Op(ok(JOB, "cancelled, or `cancel_requested` while running"),
                                             merge(_JOB_PATH, state_conflict)),
        ("POST", j + "/{job_id}/move"): Op(ok(JOB), merge(_JOB_JSON, state_conflict),
                                           body=json_body(obj({"queue": _QUEUE_NAME}))),
        ("GET", j + "/queues"): Op(ok(obj({"queues": array(_QUEUE_INFO)})), merge(_AUTH, _DOC)),
        ("PUT", j + "/queues/{queue}"): Op(
            ok(_QUEUE_INFO), merge(_DB_JSON, {404: ["queue_not_found"]}),
            body=json_body(obj({}, {
                "concurrency": _opt(_int(1, 1_000_000)),
                "throttle": _opt(obj({"rate": _int(1, 1_000_000_000), "window_seconds": _num(0.001, _SECONDS)})),
                "paused": BOOL}, closed=True))),
        ("DELETE", j + "/queues/{queue}"): Op(no_content("the queue's jobs and settings are gone"),
                                              merge(_AUTH, _DOC, {400: ["validation_failed"],
                                                                  404: ["queue_not_found"], 409: ["queue_busy"]})),
        ("POST", j + "/queues/{queue}/pause"): Op(ok(_QUEUE_INFO), merge(_AUTH, _DOC, {400: ["validation_failed"]})),
        ("POST", j + "/queues/{queue}/resume"): Op(ok(_QUEUE_INFO), merge(_AUTH, _DOC, {400: ["validation_failed"]})),
        ("POST", j + "/queues/{queue}/clear"): Op(_REMOVED, merge(_AUTH, _DOC, {400: ["validation_failed"]})),
        ("POST", j + "/queues/{queue}/drain"): Op(_REMOVED, merge(_AUTH, _DOC, {400: ["validation_failed"]})),
        ("POST", j + "/search"): Op(
            ok(obj({"jobs": array(JOB), "next_cursor": NULL_STR})), _DB_JSON,
            body=json_body(obj({}, {"filter": _opt(_JOB_FILTER), "sort": {"enum": [
                "id", "created_at", "run_at", "started_at", "completed_at", "priority", "attempts"]},
                "order": {"enum": ["asc", "desc"]}, "limit": _opt(_int(1, 1000)),
                "cursor": _opt({"type": "string", "description": "`next_cursor` of the previous page"})},
                closed=True))),
        ("POST", j + "/bulk"): Op(ok(obj({"action": STR, "affected": INT})), _DB_JSON, body=json_body(_BULK)),
        ("GET", j + "/workers"): Op(
            ok(obj({"workers": array(obj({"worker_id": STR, "queues": array(STR), "last_seen": STR,
                                          "running": INT})), "window_seconds": NUM})),
            merge(_AUTH, _DOC, _QUERY),
            query=(query_param("window_seconds", _num(1, 86400),
                               "workers seen within this many seconds (default 60)"),)),
        ("GET", j + "/events"): Op(
            {"200": {"description": "SSE: `job` (id = event id), `heartbeat`, `reset`, `shutdown`",
                     "content": sse("job", "heartbeat", "reset", "shutdown")}},
            merge(_AUTH, _DOC, _QUERY),
            query=(query_param("since", count(), "events after this id (else `Last-Event-ID`, else from now)"),
                   query_param("heartbeat", _num(HEARTBEAT_MIN_SECONDS, HEARTBEAT_MAX_SECONDS),
                               "seconds between heartbeats"))),
    }
def _web_operations() -> dict[tuple[str, str], Op]:
    """The pages of :mod:`skald.web`: each is HTML, or a redirect to ``/ui/login`` when signed out."""
    page = {"200": {"description": "the page", "content": HTML}}
    login = redirect("not signed in: to /ui/login")
    form = {"content": {"application/x-www-form-urlencoded": {"schema": obj({}, {"csrf": STR, "sql": STR})}}}
    csrf_form = {"content": {"application/x-www-form-urlencoded": {"schema": obj({}, {"csrf": STR})}}}
    # A document page's refusals are HTML pages with the problem's status and code.
    doc_errors = {
        status: {"description": "refused (an HTML page naming the problem's code)", "content": HTML}
        for status in ("400", "403", "404", "409", "413")
    }
    u = "/ui/db/{db_id}"
    repeated: Errors = {400: ["validation_failed"]}  # a query parameter given twice (refused before the page)
    ops: dict[tuple[str, str], Op] = {
        ("GET", "/"): Op(page, {}, auth=False),
        ("GET", "/docs"): Op(page, {}, auth=False),
        ("GET", "/favicon.ico"): Op({"200": {"description": "the icon",
                                             "content": {"image/svg+xml": {"schema": STR}}}}, {}, auth=False),
        ("GET", "/ui/static/{filename}"): Op({"200": {"description": "a static asset of the web face",
                                                      "content": {"*/*": {"schema": STR}}}},
                                             {404: ["not_found"]}, auth=False),
        ("GET", "/ui/login"): Op(page, {}, query=(query_param("next", STR, "local path to return to"),),
                                 auth=False),
        ("POST", "/ui/login"): Op(
            {**redirect("signed in: to `next`"),
             **{status: {"description": "the form again, with why", "content": HTML}
                for status in ("400", "401", "403")}},
            {}, auth=False, query=(query_param("next", STR, "local path to return to"),),
            body={"content": {"application/x-www-form-urlencoded": {"schema": obj({}, {
                "csrf": STR, "token": STR, "next": STR})}}}, body_required=False,
        ),
        ("GET", "/ui/signed-out"): Op(page, {}, auth=False),
        ("GET", "/ui"): Op({**page, **login}, {}, auth=False),
        ("GET", u): Op({**page, **login, **doc_errors}, {}, auth=False),
        ("GET", u + "/tables/{table}"): Op(
            {**page, **login, **doc_errors}, {}, auth=False,
            query=(query_param("sort", STR, "column to sort by"), query_param("desc", STR, "`1`: descending"),
                   query_param("column", STR, "column to filter on"),
                   query_param("op", STR, "eq, ne, contains, gt, lt, null or notnull (else: no filter)"),
                   query_param("value", STR, "filter value"), query_param("page", STR, "page number from 1")),
        ),
        ("GET", u + "/sql"): Op({**page, **login, **doc_errors}, {}, auth=False,
                                query=(query_param("sql", STR, "a read-only statement to run"),)),
        ("POST", u + "/sql"): Op({**page, **login, **doc_errors}, {}, auth=False, body=form, body_required=False),
        ("GET", u + "/export"): Op(
            {"200": {"description": "the result as a download",
                     "content": {"text/csv": {"schema": STR}, "application/x-ndjson": {"schema": STR},
                                 "application/json": {"schema": ANY}}},
             **login, **doc_errors}, {}, auth=False,
            query=(query_param("sql", STR, "a read-only statement"),
                   query_param("format", STR, "csv, json or ndjson (else csv)")),
        ),
        ("GET", u + "/live"): Op({**page, **login, **doc_errors}, {}, auth=False,
                                 query=(query_param("sql", STR, "the statement to watch"),)),
        ("GET", u + "/topics"): Op({**page, **login, **doc_errors}, {}, auth=False,
                                   query=(query_param("topic", STR, "topic filter (MQTT wildcards)"),
                                          query_param("since_id", STR, "replay after this id"))),
        ("GET", u + "/webhooks"): Op({**page, **login, **doc_errors}, {}, auth=False,
                                     query=(query_param("endpoint", STR, "only this endpoint"),)),
        ("GET", u + "/leases"): Op({**page, **login, **doc_errors}, {}, auth=False),
        ("GET", u + "/blobs"): Op({**page, **login, **doc_errors}, {}, auth=False),
        # the job queue pages (skald.web.jobs): actions are forms that redirect back to a page
        ("GET", u + "/jobs"): Op({**page, **login, **doc_errors}, {}, auth=False,
                                 query=(query_param("done", STR, "the notice to show (set by an action)"),)),
        ("GET", u + "/jobs/queues/{queue}"): Op(
            {**page, **login, **doc_errors}, {}, auth=False,
            query=(query_param("state", STR, "jobs of this state (or `scheduled`)"),
                   query_param("cursor", STR, "the older page's cursor (from the page's link)"),
                   query_param("done", STR, "the notice to show (set by an action)"))),
        **{("POST", f"{u}/jobs/queues/{{queue}}/{action}"): Op(
            {**redirect(f"{action}: done, back to the queue's page; signed out: to the login"), **doc_errors},
            {}, auth=False, body=csrf_form, body_required=False) for action in ("pause", "resume", "retry-dead")},
        # a job id that is not a number matches no route: the router's 404 problem
        ("GET", u + "/jobs/{job_id}"): Op({**page, **login, **doc_errors}, {404: ["not_found"]}, auth=False,
                                          query=(query_param("done", STR, "the notice to show"),)),
        **{("POST", f"{u}/jobs/{{job_id}}/{action}"): Op(
            {**redirect(f"{action}: done, back to the job's page (delete: the queue's); signed out: to the login"),
             **doc_errors}, {404: ["not_found"]}, auth=False, body=csrf_form, body_required=False)
           for action in ("retry", "cancel", "delete")},
    }
    return {key: dataclasses.replace(op, errors=merge(op.errors, repeated)) if op.query else op
            for key, op in ops.items()}


OPERATIONS: dict[tuple[str, str], Op] = {
    # operations: unauthenticated probes
    ("GET", "/healthz"): Op(ok(obj({"status": {"const": "ok"}})), {}, auth=False),
    ("GET", "/readyz"): Op(ok(obj({"status": {"const": "ready"}})), {503: ["not_ready"]}, auth=False),
    ("GET", "/status"): Op(ok(obj({
        "version": STR, "uptime_seconds": NUM, "pid": INT, "data_dir": STR, "open_actors": INT,
        "documents": INT, "mailboxes": {"type": "object", "additionalProperties": INT},
    })), {}, auth=False),
    ("GET", "/metrics"): Op({"200": {"description": "Prometheus text exposition",
                                     "content": {"text/plain": {"schema": STR}}}}, {}, auth=False),
    # admin
    ("POST", "/api/v1/admin/tokens"): Op(ok(MINTED, "the token; `token` is its secret, shown once", 201),
                                         merge(_AUTH, _JSON), body=json_body(_MINT)),
    ("GET", "/api/v1/admin/tokens"): Op(ok(obj({"tokens": array(TOKEN)})), _AUTH,
                                        query=(query_param("owner", STR, "only this owner's tokens"),)),
    ("GET", "/api/v1/admin/tokens/{token_id}"): Op(ok(TOKEN), merge(_AUTH, {404: ["token_not_found"]})),
    ("DELETE", "/api/v1/admin/tokens/{token_id}"): Op(no_content("revoked"),
                                                      merge(_AUTH, {404: ["token_not_found"]})),
    ("GET", "/api/v1/admin/audit"): Op(
        ok(obj({"events": array(AUDIT_EVENT), "next_before_id": NULL_INT})), merge(_AUTH, _QUERY),
        query=(query_param("before_id", count(1), "events older than this id"),
               query_param("limit", count(1), LIMIT + "; capped at 1000"),
               query_param("event", STR, "only events of this kind, e.g. `token.create`"),
               query_param("after_id", count(0), "this node's own events after this id, oldest first "
                           "(following the log; on a cluster, what the audit collector asks each node)"),
               query_param("node", {"enum": ["local"]}, "on a cluster: this node's own events, not the "
                           "cluster's log")),
    ),
    # documents
    ("GET", "/api/v1/db"): Op(ok(obj({"documents": array(obj({"db_id": STR, "open": BOOL}))})),
                              {401: _AUTH[401]}),
    ("PUT", D): Op({**ok(DOCUMENT, "created", 201), **ok(DOCUMENT, "it already existed")},
                   merge(_AUTH, {400: ["invalid_db_id"], 404: ["not_found"], 503: _DOC[503]})),
    ("GET", D): Op(ok(DOCUMENT), merge(_AUTH, _DOC)),
    ("DELETE", D): Op(no_content("deleted with its files"), merge(_AUTH, _DOC)),
    # query
    ("POST", D + "/query"): Op(
        {"200": {"description": "the result; as CSV or NDJSON (streamed) with `?format=` or `Accept`",
                 "headers": {"Skald-Truncated": {"schema": STR, "description": "CSV/NDJSON: a cap cut it"}},
                 "content": {"application/json": {"schema": {**QUERY_RESULT, "properties": {
                     **QUERY_RESULT["properties"], "duration_ms": NUM}}},
                     "text/csv": {"schema": STR}, "application/x-ndjson": {"schema": STR}}}},
        merge(_AUTH, _DOC, _JSON, _SQL, {400: ["unsupported_format"]}),
        query=(query_param("format", {"enum": ["json", "csv", "ndjson"]},
                           "result format (else from `Accept`; default json)"),),
    ),
    ("POST", D + "/query/batch"): Op(ok(obj({"results": array(QUERY_RESULT), "duration_ms": NUM})),
                                     merge(_AUTH, _DOC, _JSON, _SQL)),
    ("POST", D + "/query/stream"): Op(
        ndjson_acks("one line per input line, in order, after its commit: `{line, columns, rows, row_count, "
                    "truncated, changes, last_insert_rowid}` or `{line, problem}`"),
        merge(_AUTH, _DOC),
        body=ndjson_body(obj({"sql": STR}, {"args": {"type": ["array", "object", "null"]}}, closed=True),
                         "one `{sql, args}` per line; lines run in order"), body_required=False,
    ),
    ("POST", D + "/query/watch"): Op(
        {"200": {"description": "SSE: `snapshot` (or `unchanged` for a known `result_hash`), then `update` when the "
                                "result changes, `heartbeat`",
                 "content": sse("snapshot", "unchanged", "update", "heartbeat", "error")}},
        merge(_AUTH, _DOC, _JSON, _SQL, {400: ["not_read_only"]}),
    ),
    # pub/sub
    ("POST", D + "/messages"): Op(
        {**ok({"anyOf": [obj({"id": INT, "topic": STR, "created_at": STR}), PUBLISHED_BATCH]},
              "published (a batch: `ids` in order)", 201),
         **ok({"anyOf": [obj({"id": INT, "topic": STR, "created_at": STR, "deduplicated": {"const": True}}),
                         PUBLISHED_BATCH]},
              "a repeated dedupe_key: the original message (a batch: every one was)")},
        merge(_DB_JSON, {400: ["invalid_topic"]}),
        body=json_body({"oneOf": [PUBLISH, obj({"messages": {**array(PUBLISH), "minItems": 1, "maxItems": 1000}},
                                               closed=True)],
                        "description": "one message, or `messages`: up to 1,000 published all or nothing"}),
    ),
    ("POST", D + "/messages/stream"): Op(
        ndjson_acks("one line per input line, in order, after its commit: `{line, id, topic, created_at}` "
                    "(`deduplicated: true` for a repeated dedupe_key) or `{line, problem}`"),
        merge(_AUTH, _DOC),
        body=ndjson_body(PUBLISH, "one message per line, as `POST …/messages` takes it"), body_required=False,
    ),
    ("GET", D + "/messages"): Op(
        ok(obj({"messages": array(MESSAGE), "next_since_id": INT},
               {"reset": obj({"requested_since_id": INT, "oldest_id": INT})})),
        merge(_AUTH, _DOC, _QUERY, {400: ["invalid_topic"]}),
        query=(_TOPIC_FILTERS, _SINCE_ID,
               query_param("limit", count(1, 1000), LIMIT)),
    ),
    ("GET", D + "/events/stream"): Op(
        {"200": {"description": "SSE: `message`, `heartbeat`, `reset`, `error`",
                 "content": sse("message", "heartbeat", "reset", "error")}},
        merge(_AUTH, _DOC, _QUERY, {400: ["invalid_topic", "bad_request"]}),
        query=(_TOPIC_FILTERS, _SINCE_ID,
               query_param("tail", count(0, 1000),
                           "start with the last N messages (not with since_id)"),
               query_param("heartbeat", {"type": "number", "minimum": 0.1, "maximum": 3600},
                           "seconds between heartbeats")),
    ),
    ("GET", D + "/messages/retention"): Op(ok({**RETENTION, "properties": {**RETENTION["properties"],
                                                                           "pruned_through": INT}}),
                                           merge(_AUTH, _DOC)),
    ("PUT", D + "/messages/retention"): Op(
        ok({**RETENTION, "properties": {**RETENTION["properties"], "removed": INT}}), _DB_JSON,
        body=json_body(obj({}, {
            "max_age_seconds": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 100 * 365 * 86400},
            "max_count": {"type": ["integer", "null"], "minimum": 1, "maximum": INT64_MAX},
            "max_bytes": {"type": ["integer", "null"], "minimum": 1, "maximum": INT64_MAX},
        }, closed=True)),
    ),
    ("POST", D + "/ping"): Op(ok(obj({"ok": {"const": True}})), merge(_AUTH, {400: ["invalid_db_id"]}),
                              body=json_body(ANY), body_required=False),
    # webhooks
    **{
        (method, D + "/webhooks/{endpoint}"): Op(
            {**ok(obj({"id": INT, "endpoint": STR, "delivery_id": STR, "received_at": STR,
                       "duplicate": BOOL}), "stored", 201),
             **ok(obj({"id": INT, "endpoint": STR, "delivery_id": STR, "received_at": STR,
                       "duplicate": {"const": True}}), "a delivery id seen before: not stored again")},
            merge(_AUTH, _DOC, {400: ["invalid_endpoint"], 401: ["webhook_signature_invalid"],
                                413: ["payload_too_large"]}),
            body={"content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}},
            body_required=False,
        )
        for method in ("POST", "PUT", "PATCH")
    },
    ("GET", D + "/webhooks/{endpoint}/config"): Op(ok(WEBHOOK_CONFIG),
                                                   merge(_AUTH, _DOC, {400: ["invalid_endpoint"]})),
    ("PUT", D + "/webhooks/{endpoint}/config"): Op(
        ok(WEBHOOK_CONFIG), merge(_DB_JSON, {400: ["invalid_endpoint"]}),
        body=json_body(obj({}, {
            "verify": {"anyOf": [*_VERIFY_IN["anyOf"], {"type": "null"}]},
            "redact_headers": {"type": ["array", "null"], "items": {"type": "string", "minLength": 1}},
        }, closed=True)),
    ),
    ("DELETE", D + "/webhooks/{endpoint}/config"): Op(
        no_content("settings removed"), merge(_AUTH, _DOC, {400: ["invalid_endpoint"], 404: ["not_found"]}),
    ),
    # leases
    ("POST", D + "/leases/acquire"): Op(
        ok(LEASE, "acquired; `lease_token` is shown once", 201), merge(_DB_JSON, {409: ["lease_held"]}),
        body=json_body(obj({"resource": {"type": "string", "minLength": 1, "maxLength": 256},
                            "owner": {"type": "string", "minLength": 1, "maxLength": 256}},
                           {"ttl_seconds": _TTL})),
    ),
    ("POST", D + "/leases/renew"): Op(
        ok(LEASE), merge(_DB_JSON, {403: ["lease_token_mismatch"], 409: ["lease_expired"]}),
        body=json_body(obj({"resource": {"type": "string", "minLength": 1},
                            "lease_token": {"type": "string", "minLength": 1}},
                           {"ttl_seconds": _TTL})),
    ),
    ("POST", D + "/leases/release"): Op(
        ok({**LEASE, "properties": {**LEASE["properties"], "released": {"const": True}}}),
        merge(_DB_JSON, {403: ["lease_token_mismatch"], 409: ["lease_expired"]}),
        body=json_body(obj({"resource": {"type": "string", "minLength": 1},
                            "lease_token": {"type": "string", "minLength": 1}})),
    ),
    # blobs
    ("POST", D + "/blobs/init-upload"): Op(
        ok(obj({"sha256": SHA256, "size": INT, "exists": BOOL}, {"upload": obj({
            "method": {"const": "PUT"}, "url": STR, "headers": {"type": "object"}, "expires_in": INT})}),
           "`exists`: already stored (nothing to upload); else PUT the bytes to `upload.url`"),
        merge(_DB_JSON, _STORAGE),
        body=json_body(obj({"sha256": SHA256, "size": {"type": "integer", "minimum": 0,
                                                                 "maximum": MAX_SINGLE_PUT_BYTES}},
                           {"content_type": {"type": "string", "minLength": 1, "maxLength": 255}})),
    ),
    ("POST", D + "/blobs/complete-upload"): Op(
        ok(obj({"sha256": SHA256, "size": INT, "content_type": STR, "state": {"const": "complete"}})),
        merge(_DB_JSON, _STORAGE, {404: ["blob_not_found"], 409: ["blob_not_uploaded", "blob_hash_mismatch"]}),
        body=json_body(_BLOB_BODY),
    ),
    ("GET", D + "/blobs/{sha256}/read-url"): Op(
        ok(obj({"sha256": SHA256, "size": INT, "content_type": STR, "url": STR, "expires_in": INT,
                "expires_at": STR})),
        merge(_AUTH, _DOC, _STORAGE, {404: ["blob_not_found"]}),
    ),
    ("POST", D + "/blobs/claim"): Op(ok(obj({"sha256": SHA256, "ref": STR, "claimed": BOOL})),
                                     merge(_DB_JSON, _STORAGE, {404: ["blob_not_found"]}),
                                     body=json_body(_BLOB_REF)),
    ("POST", D + "/blobs/release"): Op(ok(obj({"sha256": SHA256, "ref": STR, "released": BOOL})),
                                       merge(_DB_JSON, _STORAGE), body=json_body(_BLOB_REF)),
    ("GET", D + "/blobs"): Op(
        ok(obj({"blobs": array(obj({"sha256": SHA256, "ref": STR, "claimed_at": STR}))})),
        merge(_AUTH, _DOC, _STORAGE),
        query=(query_param("sha256", SHA256, "only references to this blob"),
               query_param("limit", count(1), "at most this many (at most 10000 are returned)")),
    ),
    # sync
    ("GET", D + "/snapshot"): Op(
        {"200": {"description": "a consistent copy of the database file; `Skald-Change-Seq` names its position",
                 "content": {"application/vnd.sqlite3": {"schema": {"type": "string", "format": "binary"}}}}},
        merge(_AUTH, _DOC),
    ),
    ("GET", D + "/changes"): Op(
        ok(obj({"changes": array(CHANGE), "last_seq": INT, "reset": BOOL, "since": INT, "has_more": BOOL})),
        merge(_AUTH, _DOC, _QUERY),
        query=(query_param("since", count(), "changes after this sequence number"),
               query_param("limit", count(1, 1000), LIMIT)),
    ),
    ("GET", D + "/changes/stream"): Op(
        {"200": {"description": "SSE: `change` (id = seq), `heartbeat`, `reset`",
                 "content": sse("change", "heartbeat", "reset")}},
        merge(_AUTH, _DOC, _QUERY),
        query=(query_param("since", count(),
                           "changes after this sequence number (else `Last-Event-ID`, else 0)"),),
    ),
    # people: the OIDC login and the token page (HTML; a session cookie, not a bearer token)
    ("GET", "/auth/login"): Op(redirect("to the identity provider"), {404: ["oidc_not_configured"],
                                                                      502: ["oidc_provider_unavailable"]},
                               query=(query_param("next", STR, "local path to return to"),), auth=False),
    ("GET", "/auth/callback"): Op(
        redirect("signed in: to `next`"),
        {400: ["login_failed"], 404: ["oidc_not_configured"], 502: ["oidc_provider_unavailable"]},
        query=tuple(query_param(n, STR) for n in ("code", "state", "iss", "error", "error_description")),
        auth=False,
    ),
    ("POST", "/auth/logout"): Op(redirect("signed out"), {403: ["csrf_failed"]}, auth=False,
                                 body={"content": {"application/x-www-form-urlencoded": {
                                     "schema": obj({}, {"csrf": STR})}}}, body_required=False),
    ("GET", "/ui/tokens"): Op({"200": {"description": "the token page", "content": HTML},
                               **redirect("not signed in: to the login")},
                              {}, auth=False),
    ("POST", "/ui/tokens"): Op(
        {"200": {"description": "the page with the new token", "content": HTML},
         "400": {"description": "the page with the form's error", "content": HTML},
         **redirect("not signed in: to the login")},
        {403: ["csrf_failed", "scope_denied"]}, auth=False,
        body={"content": {"application/x-www-form-urlencoded": {"schema": obj({}, {
            "csrf": STR, "label": STR, "scopes": STR, "expires": STR})}}}, body_required=False,
    ),
    ("POST", "/ui/tokens/{token_id}/revoke"): Op(
        redirect("revoked: back to the page"), {403: ["csrf_failed"], 404: ["token_not_found"]},
        auth=False, body={"content": {"application/x-www-form-urlencoded": {"schema": obj({}, {"csrf": STR})}}},
        body_required=False,
    ),
    # the web face (HTML; a session cookie, not a bearer token): home, API docs, sign-in, the browser
    **_web_operations(),
}
OPERATIONS.update(_job_operations())

# libSQL's remote protocol (Hrana over HTTP; docs/libsql.md). Statement errors are inside the 200 response
# (`results[i].error` with a Hrana `code`); these problems refuse the whole request.
# Inside a step only the shape is checked at the HTTP layer (a malformed statement is a Hrana error in the
# 200 answer, as the spec has it), so the schema declares no more than that shape.
_HRANA_STMT: Schema = {"type": "object", "description": "a Hrana `Stmt`: `sql` or `sql_id`, `args`, `named_args`, "
                                                        "`want_rows` (docs/libsql.md)"}
_HRANA_BATCH: Schema = obj({"steps": array(obj({"stmt": _HRANA_STMT}, {"condition": ANY}))})
_HRANA_ERRORS = merge(_AUTH, _DOC, _JSON, {400: ["hrana_protocol_error"], 404: ["hrana_stream_not_found"],
                                           503: ["hrana_too_many_streams", "shutting_down"]})
_HRANA_PIPELINE = Op(
    ok(obj({"baton": NULL_STR, "base_url": NULL_STR,
            "results": array(obj({"type": {"enum": ["ok", "error"]}}, {"response": ANY, "error": ANY}))}),
       "one result per request, in order; `baton` names the stream for the next request (null: closed)"),
    _HRANA_ERRORS,
    body=json_body(obj({"requests": array(obj({"type": STR}))}, {"baton": NULL_STR})),
)
_HRANA_CURSOR = Op(
    {"200": {"description": "lines of JSON: `{baton, base_url}`, then cursor entries",
             "content": {"application/x-ndjson": {"schema": STR}}}},
    _HRANA_ERRORS,
    body=json_body(obj({"batch": _HRANA_BATCH}, {"baton": NULL_STR})),
)
_HRANA_VERSION = Op(ok(obj({"hrana": array(INT), "encoding": STR}), "this server speaks Hrana 2 and 3 (JSON)"),
                    {400: ["invalid_db_id"]}, auth=False)
for _base in (D + "/libsql", D):  # the second: where a base URL without a trailing `/` resolves to
    OPERATIONS[("GET", _base + "/v2")] = _HRANA_VERSION
    OPERATIONS[("GET", _base + "/v3")] = _HRANA_VERSION
    OPERATIONS[("POST", _base + "/v2/pipeline")] = _HRANA_PIPELINE
    OPERATIONS[("POST", _base + "/v3/pipeline")] = _HRANA_PIPELINE
    OPERATIONS[("POST", _base + "/v3/cursor")] = _HRANA_CURSOR


_RULE_VARIABLE = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


def single_valued_parameters() -> dict[tuple[str, str], tuple[str, ...]]:
    """``(METHOD, openapi path)`` -> the query parameters declared as one value (not an array)."""
    return {
        key: names
        for key, op in OPERATIONS.items()
        if (names := tuple(p["name"] for p in op.query if p["schema"].get("type") != "array"))
    }


def install_single_value_check(app: Quart) -> None:
    """Refuse a single-valued query parameter given twice (400), as the document declares them.

    Werkzeug reads the first value and drops the rest, so ``?limit=5&limit=6000`` would mean
    something the request did not say.
    """
    single = single_valued_parameters()

    @app.before_request
    async def refuse_repeated_parameters() -> None:
        rule = request.url_rule
        if rule is None or not request.args:
            return
        names = single.get((request.method, _RULE_VARIABLE.sub(r"{\1}", rule.rule)), ())
        for name in names:
            if len(request.args.getlist(name)) > 1:
                raise ValidationFailed(f"{name} must be given once")


def complete(schema: dict[str, Any], extra_paths: Mapping[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Fill ``schema`` (quart-schema's document) from :data:`OPERATIONS`; add the shared components."""
    paths: dict[str, dict[str, Any]] = schema["paths"]
    for path, item in (extra_paths or {}).items():
        paths.setdefault(path, {}).update(item)
    documented = set(OPERATIONS)
    seen: set[tuple[str, str]] = set()
    for path, item in paths.items():
        for method, operation in item.items():
            key = (method.upper(), path)
            seen.add(key)
            # quart-schema shares one operation dict between a rule's methods: copy before editing
            operation = item[method] = {**operation, "parameters": [dict(p) for p in operation.get("parameters", [])]}
            # Unique by construction (quart-schema names them after view functions, and two modules'
            # `list_view`s collide): the method and the path.
            operation["operationId"] = method + "_" + re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_")
            entry = OPERATIONS.get(key)
            if entry is None and operation.get("responses"):
                continue  # described where it is built (the relay's table)
            if entry is None:
                raise LookupError(f"{key[0]} {path} has no entry in skald.http.openapi.OPERATIONS")
            entry.apply(operation)
    stale = documented - seen
    if stale:
        raise LookupError(f"skald.http.openapi.OPERATIONS names routes that do not exist: {sorted(stale)}")
    components = schema.setdefault("components", {})
    components.setdefault("schemas", {})["ProblemDetails"] = PROBLEM_DETAILS
    components["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer",
                   "description": "a machine token (`skd_…`); a signed-in browser session also works"},
    }
    schema["security"] = [{"bearer": []}]
    return schema
