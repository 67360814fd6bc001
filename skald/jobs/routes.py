"""Job queue routes under ``/api/v1/db/{db_id}/jobs`` (docs/jobs.md).

Thin: authorize (``jobs.enqueue``, ``jobs.work``, ``jobs.admin``; a queue name is
the scope's resource), validate with :mod:`skald.jobs.model`, call
:class:`~skald.jobs.service.JobService`, render.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from quart import Response, jsonify, request
from quart_trio import QuartTrio

from skald.auth.guard import authorize, check_scope, current_principal, requires
from skald.auth.scopes import Principal
from skald.db.ids import validate_db_id
from skald.errors import DocumentNotFound, PayloadTooLarge, ValidationFailed
from skald.http.context import request_ip
from skald.http.ndjson import Ack, AckStream, Start, Started, ndjson_response
from skald.http.params import float_param, heartbeat_param, int_param
from skald.http.sse import sse_response
from skald.http.state import AppState, get_state
from skald.jobs import model, search
from skald.jobs.errors import JobNotFound
from skald.jobs.ops import Beat
from skald.jobs.service import Fetched, JobService

# `<string:db_id>` (the default converter, spelled out): quart-schema's path regex reads a converted
# variable after a bare one as one variable (`/db/{job_id}`), and `<int:job_id>` keeps `/jobs/batch`
# from also matching the job routes (their methods would show up in its `Allow`).
BASE = "/api/v1/db/<string:db_id>/jobs"
BATCH_BODY_BYTES = 32 * 1024 * 1024
STREAM_WINDOW = 1000
"""Enqueue lines in flight on one stream (queued, not yet acknowledged) before its reading pauses."""
WORK_WINDOW = 4
"""Worker-stream lines read ahead of the one being answered (each waits for the one before it)."""
DEFAULT_WORKER_WINDOW = 60.0


def install(app: QuartTrio, state: AppState) -> None:
    state.job_queues = JobService(state.supervisor, state.metrics, shutdown=state.shutdown.event)
    rules: list[tuple[str, Any, str]] = [
        ("", enqueue_view, "POST"),
        ("/batch", batch_view, "POST"),
        ("/stream", enqueue_stream_view, "POST"),
        ("/work", work_stream_view, "POST"),
        ("/fetch", fetch_view, "POST"),
        ("/heartbeat", heartbeat_view, "POST"),
        ("/ack", ack_many_view, "POST"),
        ("/<int:job_id>/ack", ack_view, "POST"),
        ("/<int:job_id>/fail", fail_view, "POST"),
        ("/<int:job_id>", get_view, "GET"),
        ("/<int:job_id>", delete_view, "DELETE"),
        ("/<int:job_id>/retry", retry_view, "POST"),
        ("/<int:job_id>/cancel", cancel_view, "POST"),
        ("/<int:job_id>/move", move_view, "POST"),
        ("/queues", queues_view, "GET"),
        ("/queues/<queue>", put_queue_view, "PUT"),
        ("/queues/<queue>", delete_queue_view, "DELETE"),
        ("/queues/<queue>/pause", pause_view, "POST"),
        ("/queues/<queue>/resume", resume_view, "POST"),
        ("/queues/<queue>/clear", clear_view, "POST"),
        ("/queues/<queue>/drain", drain_view, "POST"),
        ("/search", search_view, "POST"),
        ("/bulk", bulk_view, "POST"),
        ("/workers", workers_view, "GET"),
        ("/events", events_view, "GET"),
    ]
    for suffix, view, method in rules:
        app.add_url_rule(BASE + suffix, endpoint="jobs_" + view.__name__, view_func=view, methods=[method])


def _service() -> JobService:
    service: JobService = get_state().job_queues
    return service


async def _body(limit: int | None = None) -> dict[str, Any]:
    cap = limit or get_state().settings.message_max_bytes + 64 * 1024
    if request.content_length is not None and request.content_length > cap:
        raise PayloadTooLarge(f"request body is over {cap} bytes", limit=cap)
    return model.obj(await request.get_json(force=True))


def _job(job: model.Job, status: int = 200, **extra: Any) -> tuple[Response, int]:
    return jsonify({**job.to_json(), **extra}), status


def _job_id(value: int) -> int:
    """A job id from the path; beyond SQLite's integers it names no job (404, not an overflow)."""
    if not 0 < value < 2**63:
        raise JobNotFound(f"job {value} does not exist")
    return value


def _queue_resource(kwargs: dict[str, Any]) -> str:
    return str(kwargs.get("queue", ""))


# ---- producers ------------------------------------------------------------------------------------


@requires("jobs.enqueue")
async def enqueue_view(db_id: str) -> tuple[Response, int]:
    """One job: 201 with it, or 200 with the live job holding the same ``unique_key`` (``duplicate: true``)."""
    spec = model.JobSpec.parse(await _body(), get_state().settings.message_max_bytes)
    await authorize(current_principal(), db_id, "jobs.enqueue", spec.queue)
    job, duplicate = await _service().enqueue(db_id, spec)
    return _job(job, 200 if duplicate else 201, duplicate=duplicate)


@requires("jobs.enqueue")
async def batch_view(db_id: str) -> tuple[Response, int]:
    """``{"jobs": [...]}``: every job in one transaction, or none (the first invalid one is the 400)."""
    body = await _body(BATCH_BODY_BYTES)
    items = body.get("jobs")
    if not isinstance(items, list) or not 1 <= len(items) <= model.MAX_BATCH:
        raise ValidationFailed(f"jobs must be a list of 1-{model.MAX_BATCH} jobs")
    limit = get_state().settings.message_max_bytes
    specs = []
    for index, item in enumerate(items):
        try:
            specs.append(model.JobSpec.parse(item, limit))
        except ValidationFailed as exc:
            raise ValidationFailed(f"jobs[{index}]: {exc.detail}", index=index) from None
    for queue in sorted({spec.queue for spec in specs}):
        await authorize(current_principal(), db_id, "jobs.enqueue", queue)
    done = await _service().enqueue_batch(db_id, specs)
    created = any(not duplicate for _, duplicate in done)
    jobs = [{**job.to_json(), "duplicate": duplicate} for job, duplicate in done]
    return jsonify({"jobs": jobs}), 201 if created else 200


def _stream_document(db_id: str) -> None:
    validate_db_id(db_id)
    if not get_state().supervisor.exists(db_id):  # refused before the 200 of the stream, not inside it
        raise DocumentNotFound(f"document {db_id} does not exist")


def _stream_line_cap(items: int = 1) -> int:
    return (get_state().settings.message_max_bytes + 64 * 1024) * items


@requires("jobs.enqueue")
async def enqueue_stream_view(db_id: str) -> Response:
    """NDJSON in, NDJSON out: one job per line (as ``POST …/jobs``), one acknowledgement per line once
    its enqueue committed (``{"line", "id", "queue", "state", "duplicate"}``) or ``{"line", "problem"}``."""
    _stream_document(db_id)
    # The stream's body runs outside the request's app context: everything it needs is taken here.
    state, service, principal, path, ip = get_state(), _service(), current_principal(), request.path, request_ip()

    @contextlib.asynccontextmanager
    async def opened() -> AsyncIterator[Start]:
        limit = state.settings.message_max_bytes
        async with service.enqueue_stream(db_id) as stream:

            async def start(value: Any) -> Started:
                spec = model.JobSpec.parse(value, limit)
                await check_scope(state, principal, db_id, "jobs.enqueue", spec.queue, path=path, ip=ip)
                pending = await stream.add(spec)

                async def wait() -> Ack:
                    job, duplicate = await pending.result()
                    return {"id": job.id, "queue": job.queue, "state": job.state, "duplicate": duplicate}

                return Started(wait, lambda: pending.done)

            yield start

    return ndjson_response(AckStream(request.body, opened, window=STREAM_WINDOW, max_line=_stream_line_cap()))


def _fetch_fields(body: dict[str, Any], *, allow_zero: bool = False) -> tuple[list[str], str, float, float, int | None]:
    """``queues``, ``worker_id``, ``lease_seconds``, ``wait_seconds``, ``max_jobs`` of a fetch body."""
    queues = body.get("queues")
    if not isinstance(queues, list) or not 1 <= len(queues) <= 100:
        raise ValidationFailed("queues must be a list of 1-100 queue names")
    names = list(dict.fromkeys(model.queue_name(q, "queues[]") for q in queues))
    worker_id = model.text(body.get("worker_id"), "worker_id", optional=False)
    assert worker_id is not None
    lease_seconds = _lease_seconds(body.get("lease_seconds"))
    wait = model.number(body.get("wait_seconds"), "wait_seconds", minimum=0, maximum=model.MAX_WAIT_SECONDS,
                        default=0.0)
    assert wait is not None
    max_jobs = model.integer(body.get("max_jobs"), "max_jobs", minimum=0 if allow_zero else 1,
                             maximum=model.MAX_FETCH)
    return names, worker_id, lease_seconds, wait, max_jobs


def _acks(items: Any, max_bytes: int) -> list[tuple[int, str, str | None]]:
    if not isinstance(items, list) or len(items) > model.MAX_BATCH:
        raise ValidationFailed(f"ack must be a list of at most {model.MAX_BATCH} entries")
    acks = []
    for item in items:
        entry = model.obj(item, "ack[]")
        job_id = model.required_integer(entry.get("id"), "ack[].id", minimum=1, maximum=2**63 - 1)
        result = None if entry.get("result") is None else model.to_json_text(entry["result"], "result", max_bytes)
        acks.append((job_id, _lease(entry), result))
    return acks


def _work_start(state: AppState, principal: Principal, db_id: str, path: str, ip: str) -> Start:
    service = _service()

    async def start(value: Any) -> Started:
        body = model.obj(value, "line")
        unknown = set(body) - {"queues", "worker_id", "lease_seconds", "wait_seconds", "max_jobs", "ack"}
        if unknown:
            raise ValidationFailed(f"unknown fields: {', '.join(sorted(unknown))}")
        names, worker_id, lease_seconds, wait, max_jobs = _fetch_fields(body, allow_zero=True)
        acks = _acks(body.get("ack", []), state.settings.message_max_bytes)
        for queue in names:  # every line: a line may name other queues than the one before
            await check_scope(state, principal, db_id, "jobs.work", queue, path=path, ip=ip)
        count = 1 if max_jobs is None else max_jobs

        async def wait_for() -> Ack:
            answers, fetched = await service.ack_and_fetch(db_id, acks, names, worker_id, lease_seconds, wait,
                                                              count)
            return {"acks": answers, "jobs": [_fetched(one) for one in fetched]}

        return Started(wait_for, lambda: False)

    return start


@requires("jobs.work")
async def work_stream_view(db_id: str) -> Response:
    """A worker's fetch/ack loop over one request: each line ``{"queues", "worker_id", "lease_seconds"?,
    "wait_seconds"?, "max_jobs"? (0: only ack), "ack"?: [{"id", "lease", "result"?}]}`` acks and claims in
    one commit and is answered ``{"line", "acks": [...], "jobs": [...]}`` (or ``{"line", "problem"}``),
    lines in order, each after the one before it (a waiting fetch holds the lines behind it)."""
    _stream_document(db_id)
    # The stream's body runs outside the request's app context: everything it needs is taken here.
    state, service = get_state(), _service()
    start = _work_start(state, current_principal(), db_id, request.path, request_ip())

    @contextlib.asynccontextmanager
    async def opened() -> AsyncIterator[Start]:
        async with service.held(db_id):
            yield start

    return ndjson_response(AckStream(request.body, opened, window=WORK_WINDOW,
                                     max_line=min(BATCH_BODY_BYTES, _stream_line_cap(4))))


# ---- workers --------------------------------------------------------------------------------------


def _lease_seconds(value: Any) -> float:
    seconds = model.number(value, "lease_seconds", minimum=1, maximum=model.MAX_LEASE_SECONDS,
                           default=model.DEFAULT_LEASE_SECONDS)
    assert seconds is not None
    return seconds


@requires("jobs.work")
async def fetch_view(db_id: str) -> Response | tuple[Response, int]:
    """``{"queues", "worker_id", "lease_seconds"?, "wait_seconds"?, "max_jobs"?}`` -> 200 with a job and its
    lease (with ``max_jobs``: ``{"jobs": [...]}`` of up to that many), or 204."""
    body = await _body()
    names, worker_id, lease_seconds, wait, max_jobs = _fetch_fields(body)
    for queue in names:
        await authorize(current_principal(), db_id, "jobs.work", queue)
    fetched = await _service().fetch(db_id, names, worker_id, lease_seconds, wait, max_jobs or 1)
    if not fetched:
        return Response("", status=204)
    jobs = [_fetched(one) for one in fetched]
    return jsonify({"jobs": jobs} if max_jobs is not None else jobs[0]), 200


def _fetched(fetched: Fetched) -> dict[str, Any]:
    job = fetched.job
    lease = {"token": fetched.lease, "fence": job.fence, "expires_at": model.iso(job.lease_expires_ms)}
    return {**job.to_json(), "attempt": job.attempts, "lease": lease}


def _json_field(body: dict[str, Any], name: str) -> str | None:
    if body.get(name) is None:
        return None
    return model.to_json_text(body[name], name, get_state().settings.message_max_bytes)


def _lease(body: dict[str, Any]) -> str:
    lease = model.text(body.get("lease"), "lease", optional=False)
    assert lease is not None
    return lease


@requires("jobs.work")
async def heartbeat_view(db_id: str) -> dict[str, Any]:
    """``{"worker_id", "jobs": [{"id", "lease", "progress"?, "checkpoint"?}], "lease_seconds"?}``."""
    body = await _body(BATCH_BODY_BYTES)
    worker_id = model.text(body.get("worker_id"), "worker_id", optional=False)
    assert worker_id is not None
    items = body.get("jobs")
    if not isinstance(items, list) or len(items) > model.MAX_BATCH:
        raise ValidationFailed(f"jobs must be a list of at most {model.MAX_BATCH} entries")
    beats = []
    for item in items:
        entry = model.obj(item, "jobs[]")
        job_id = model.required_integer(entry.get("id"), "jobs[].id", minimum=1, maximum=2**63 - 1)
        beats.append(Beat(job_id, _lease(entry), _json_field(entry, "progress"), _json_field(entry, "checkpoint")))
    answers = await _service().heartbeat(db_id, worker_id, beats, _lease_seconds(body.get("lease_seconds")))
    return {"jobs": answers}


@requires("jobs.work")
async def ack_view(db_id: str, job_id: int) -> tuple[Response, int]:
    """``{"lease", "result"?}`` -> the completed job; 409 ``job_lease_mismatch`` for a stale or foreign lease."""
    body = await _body()
    return _job(await _service().ack(db_id, _job_id(job_id), _lease(body), _json_field(body, "result")))


@requires("jobs.work")
async def ack_many_view(db_id: str) -> dict[str, Any]:
    """``{"jobs": [{"id", "lease", "result"?}]}`` -> per job ``{"id", "ok", "state"}`` or ``{"id", "ok": false,
    "code", "detail"}``: one commit for all of them; a bad lease fails only its own entry."""
    body = await _body(BATCH_BODY_BYTES)
    items = body.get("jobs")
    if not isinstance(items, list) or not 1 <= len(items) <= model.MAX_BATCH:
        raise ValidationFailed(f"jobs must be a list of 1-{model.MAX_BATCH} entries")
    acks = []
    for item in items:
        entry = model.obj(item, "jobs[]")
        job_id = model.required_integer(entry.get("id"), "jobs[].id", minimum=1, maximum=2**63 - 1)
        acks.append((job_id, _lease(entry), _json_field(entry, "result")))
    return {"jobs": await _service().ack_many(db_id, acks)}


@requires("jobs.work")
async def fail_view(db_id: str, job_id: int) -> tuple[Response, int]:
    """``{"lease", "error", "backtrace"?, "checkpoint"?}`` -> the job, retrying (after backoff) or dead."""
    body = await _body()
    error = model.text(body.get("error"), "error", optional=False, limit=model.MAX_ERROR_BYTES)
    backtrace = model.text(body.get("backtrace"), "backtrace", limit=model.MAX_ERROR_BYTES)
    assert error is not None
    job = await _service().fail(db_id, _job_id(job_id), _lease(body), error, backtrace, _json_field(body, "checkpoint"))
    return _job(job)


# ---- one job --------------------------------------------------------------------------------------


@requires("jobs.enqueue")
async def get_view(db_id: str, job_id: int) -> dict[str, Any]:
    return await _service().get(db_id, _job_id(job_id))


@requires("jobs.admin")
async def delete_view(db_id: str, job_id: int) -> Response:
    await _service().delete(db_id, _job_id(job_id))
    return Response("", status=204)


@requires("jobs.admin")
async def retry_view(db_id: str, job_id: int) -> tuple[Response, int]:
    return _job(await _service().retry(db_id, _job_id(job_id)))


@requires("jobs.admin")
async def cancel_view(db_id: str, job_id: int) -> tuple[Response, int]:
    return _job(await _service().cancel(db_id, _job_id(job_id)))


@requires("jobs.admin")
async def move_view(db_id: str, job_id: int) -> tuple[Response, int]:
    queue = model.queue_name((await _body()).get("queue"))
    return _job(await _service().move(db_id, _job_id(job_id), queue))


# ---- queues ---------------------------------------------------------------------------------------


@requires("jobs.admin")
async def queues_view(db_id: str) -> dict[str, Any]:
    return {"queues": await _service().queues(db_id)}


@requires("jobs.admin", resource=_queue_resource)
async def put_queue_view(db_id: str, queue: str) -> dict[str, Any]:
    """``{"concurrency"?: int|null, "throttle"?: {"rate", "window_seconds"}|null, "paused"?: bool}``."""
    model.queue_name(queue)
    body = await _body()
    unknown = set(body) - {"concurrency", "throttle", "paused"}
    if unknown:
        raise ValidationFailed(f"unknown fields: {', '.join(sorted(unknown))}")
    fields: dict[str, Any] = {}
    if "concurrency" in body:
        fields["concurrency"] = model.integer(body["concurrency"], "concurrency", minimum=1, maximum=1_000_000)
    if "throttle" in body:
        throttle = body["throttle"]
        if throttle is None:
            fields["throttle_rate"] = fields["throttle_window_seconds"] = None
        else:
            data = model.obj(throttle, "throttle")
            fields["throttle_rate"] = model.integer(data.get("rate"), "throttle.rate", minimum=1,
                                                    maximum=1_000_000_000)
            fields["throttle_window_seconds"] = model.number(data.get("window_seconds"), "throttle.window_seconds",
                                                             minimum=0.001, maximum=model.MAX_SECONDS)
            if fields["throttle_rate"] is None or fields["throttle_window_seconds"] is None:
                raise ValidationFailed("throttle needs rate and window_seconds")
    if "paused" in body:
        if not isinstance(body["paused"], bool):
            raise ValidationFailed("paused must be true or false")
        fields["paused"] = int(body["paused"])
    return await _service().configure_queue(db_id, queue, fields)


@requires("jobs.admin", resource=_queue_resource)
async def delete_queue_view(db_id: str, queue: str) -> Response:
    await _service().delete_queue(db_id, model.queue_name(queue))
    return Response("", status=204)


@requires("jobs.admin", resource=_queue_resource)
async def pause_view(db_id: str, queue: str) -> dict[str, Any]:
    return await _service().configure_queue(db_id, model.queue_name(queue), {"paused": 1})


@requires("jobs.admin", resource=_queue_resource)
async def resume_view(db_id: str, queue: str) -> dict[str, Any]:
    return await _service().configure_queue(db_id, model.queue_name(queue), {"paused": 0})


@requires("jobs.admin", resource=_queue_resource)
async def clear_view(db_id: str, queue: str) -> dict[str, Any]:
    """Delete every job of the queue that is not running (history included)."""
    states = ("queued", "retrying", "completed", "dead", "cancelled")
    return {"queue": queue, "deleted": await _service().remove_jobs(db_id, model.queue_name(queue), states)}


@requires("jobs.admin", resource=_queue_resource)
async def drain_view(db_id: str, queue: str) -> dict[str, Any]:
    """Delete the queue's waiting jobs (queued and retrying); running ones finish, history stays."""
    return {"queue": queue, "deleted": await _service().remove_jobs(db_id, model.queue_name(queue),
                                                                   ("queued", "retrying"))}


# ---- search, bulk, workers, events ----------------------------------------------------------------


@requires("jobs.admin")
async def search_view(db_id: str) -> dict[str, Any]:
    """``{"filter"?, "sort"?, "order"?, "limit"?, "cursor"?}`` -> ``{"jobs", "next_cursor"}``."""
    body = await _body()
    unknown = set(body) - {"filter", "sort", "order", "limit", "cursor"}
    if unknown:
        raise ValidationFailed(f"unknown fields: {', '.join(sorted(unknown))}")
    return await _service().search(db_id, search.parse_filter(body.get("filter")), search.Page.parse(body))


@requires("jobs.admin")
async def bulk_view(db_id: str) -> dict[str, Any]:
    """``{"action", "ids"? | "filter"?, "queue"?, "priority"?}`` -> ``{"action", "affected"}``."""
    body = await _body(BATCH_BODY_BYTES)
    action = body.get("action")
    if action not in search.BULK_ACTIONS:
        raise ValidationFailed(f"action must be one of {', '.join(search.BULK_ACTIONS)}")
    if ("ids" in body) == ("filter" in body):
        raise ValidationFailed("give exactly one of ids and filter")
    if "ids" in body and not isinstance(body["ids"], list):
        raise ValidationFailed("ids must be a list of job ids")
    if "filter" in body and not isinstance(body["filter"], dict):
        raise ValidationFailed("filter must be an object ({} matches every job)")
    where = search.parse_filter({"ids": body["ids"]} if "ids" in body else body["filter"])
    # Checked whenever given (an action that does not use one still refuses a malformed one).
    queue = model.queue_name(body.get("queue")) if "queue" in body or action == "move" else None
    new_priority = model.priority(body.get("priority"), None) if "priority" in body or action == "priority" else None
    if action != "move":
        queue = None
    if action != "priority":
        new_priority = None
    affected = await _service().bulk(db_id, str(action), where, queue, new_priority)
    return {"action": action, "affected": affected}


@requires("jobs.admin")
async def workers_view(db_id: str) -> dict[str, Any]:
    window = float_param("window_seconds", request.args.get("window_seconds"), DEFAULT_WORKER_WINDOW,
                         minimum=1, maximum=86400)
    return {"workers": await _service().workers(db_id, window), "window_seconds": window}


@requires("jobs.admin")
async def events_view(db_id: str) -> Response:
    """SSE of job state changes; resume with ``since`` or ``Last-Event-ID``."""
    state = get_state()
    raw = request.args.get("since")
    if raw is None:
        raw = request.headers.get("Last-Event-ID")
    since = int_param("since", raw)
    heartbeat = heartbeat_param(request.args.get("heartbeat"), state.settings.sse_heartbeat_seconds)
    validate_db_id(db_id)
    if not state.supervisor.exists(db_id):  # refused before the 200 of the stream, not inside it
        raise DocumentNotFound(f"document {db_id} does not exist")
    return sse_response(_service().events(db_id, since, heartbeat, state.shutdown.event))
