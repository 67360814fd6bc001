"""The job queue pages under ``/ui/db/{db_id}/jobs`` (docs/web.md, docs/jobs.md).

Everything goes through :class:`~skald.jobs.service.JobService` with the signed-in viewer's scopes,
deciding as the API does: seeing queues and their jobs is ``jobs.admin`` (``GET …/jobs/queues`` and
``…/jobs/search`` need it), a job's own page is ``jobs.enqueue`` (a producer follows its jobs), and
every action is ``jobs.admin``. A scope's resource prefix limits it to queues under that prefix on
every page here: the overview lists only those queues, and a queue's page, a job's page and every
action check the queue (the job's, for a job). That is stricter than the API's routes naming a job by
id, which check the document only (docs/jobs.md, "Scopes"). Actions are forms (a POST with the
session's CSRF token, never a link); each redirects back (post/redirect/get) with a notice from a
fixed list, so reloading the page never repeats an action and no text from the URL is echoed.
"""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import quote, urlencode

from quart import Response, request

from skald.auth.guard import check_scope
from skald.auth.identity import CsrfFailed, SignedIn
from skald.auth.scopes import allowed_prefixes, decide
from skald.errors import DocumentNotFound, SkaldError
from skald.http.context import request_ip
from skald.http.state import get_state
from skald.jobs import model, search
from skald.jobs.errors import JobNotFound
from skald.jobs.service import JobService
from skald.web.pages import page
from skald.web.render import render_page

PAGE_SIZE = 50
JOB_ACTIONS = ("retry", "cancel", "delete")
QUEUE_ACTIONS = ("pause", "resume", "retry-dead")
NOTICES = {
    "paused": "Queue paused: nothing is fetched from it until it is resumed.",
    "resumed": "Queue resumed.",
    "retried-dead": "Dead jobs queued again.",
    "retried": "Job queued again.",
    "cancelled": "Job cancelled (a running job is told at its next heartbeat).",
    "deleted": "Job deleted.",
}
STATE_TABS = (*model.STATES, "scheduled")


def _jobs() -> JobService:
    service: JobService = get_state().job_queues
    return service


def _check_document(db_id: str) -> None:
    """A page of a document that does not exist is a 404 page (opening it must not create it)."""
    if not get_state().supervisor.exists(db_id):
        raise DocumentNotFound(f"document {db_id} does not exist")


async def _require(signed: SignedIn, db_id: str, action: str, queue: str) -> None:
    await check_scope(get_state(), signed.principal, db_id, action, queue, path=request.path, ip=request_ip())


def _visible(signed: SignedIn, db_id: str, queue: str) -> bool:
    return decide(signed.principal, db_id, "jobs.admin", queue).allowed


async def _csrf(signed: SignedIn) -> None:
    form = await request.form
    if form.get("csrf") != signed.session.csrf:
        raise CsrfFailed("the form's CSRF token does not match your session; reload the page")


def _notice() -> str | None:
    return NOTICES.get(request.args.get("done", ""))


def _redirect(location: str) -> Response:
    return Response("", status=303, headers={"Location": location, "Cache-Control": "no-store"})


def _base(db_id: str) -> str:
    return "/ui/db/" + quote(db_id, safe="")


def _queue_path(db_id: str, queue: str) -> str:
    return f"{_base(db_id)}/jobs/queues/{quote(queue, safe='')}"


async def queues_page(signed: SignedIn, db_id: str) -> Response:
    """Every queue the viewer may administer, with its live counts, paused flag and limits."""
    _check_document(db_id)
    queues = [q for q in await _jobs().queues(db_id) if _visible(signed, db_id, q["name"])]
    prefixes = allowed_prefixes(signed.principal, db_id, "jobs.admin")
    return await render_page(
        "web/jobs.html", signed.viewer, title=f"{db_id} · jobs", db_id=db_id, queues=queues,
        states=STATE_TABS, prefixes=prefixes, notice=_notice(),
    )


async def queue_page(signed: SignedIn, db_id: str, queue: str) -> Response:
    """One queue: its settings and counts, its jobs of one state (newest first, cursor paging)."""
    model.queue_name(queue, "queue")
    await _require(signed, db_id, "jobs.admin", queue)
    _check_document(db_id)
    service = _jobs()
    info = next((q for q in await service.queues(db_id) if q["name"] == queue), None)
    if info is None:
        info = {"name": queue, "paused": False, "concurrency": None, "throttle": None,
                "counts": dict.fromkeys(STATE_TABS, 0)}
    state = request.args.get("state", "")
    if state not in STATE_TABS:
        state = next((s for s in ("running", "queued", "retrying", "dead") if info["counts"].get(s)), "queued")
    cursor = request.args.get("cursor") or None
    filter_: dict[str, Any] = {"queue": queue}
    if state == "scheduled":  # waiting, not yet due (the overview's count)
        filter_["state"] = ["queued", "retrying"]
        filter_["run_at_after"] = model.iso(service.clock.now_ms())
    else:
        filter_["state"] = state
    page = search.Page.parse({"sort": "id", "order": "desc", "limit": PAGE_SIZE,
                              **({"cursor": cursor} if cursor else {})})
    found = await service.search(db_id, search.parse_filter(filter_), page)
    next_link = None
    if found["next_cursor"]:
        next_link = "?" + urlencode({"state": state, "cursor": found["next_cursor"]})
    return await render_page(
        "web/queue.html", signed.viewer, title=f"{db_id} · {queue}", db_id=db_id, queue=info, state=state,
        states=STATE_TABS, jobs=found["jobs"], next_link=next_link, first_page=cursor is not None,
        queue_path=_queue_path(db_id, queue), notice=_notice(), page_size=PAGE_SIZE,
    )


async def queue_action(signed: SignedIn, db_id: str, queue: str, action: str) -> Response:
    """Pause, resume, or queue every dead job again (``retry-dead``: one bulk statement)."""
    await _csrf(signed)
    model.queue_name(queue, "queue")
    if action not in QUEUE_ACTIONS:
        raise JobNotFound(f"no queue action {action!r}")
    await _require(signed, db_id, "jobs.admin", queue)
    _check_document(db_id)
    service = _jobs()
    if action == "retry-dead":
        where = search.parse_filter({"queue": queue, "state": "dead"})
        await service.bulk(db_id, "retry", where, None, None)
        done = "retried-dead"
    else:
        await service.configure_queue(db_id, queue, {"paused": int(action == "pause")})
        done = "paused" if action == "pause" else "resumed"
    return _redirect(_queue_path(db_id, queue) + "?" + urlencode({"done": done}))


async def job_page(signed: SignedIn, db_id: str, job_id: int) -> Response:
    """One job: every field, its payload, result, checkpoint and progress, and each attempt's error."""
    _check_document(db_id)
    job = await _jobs().get(db_id, _job_id(job_id))
    await _require(signed, db_id, "jobs.enqueue", job["queue"])
    may_admin = decide(signed.principal, db_id, "jobs.admin", job["queue"]).allowed
    return await render_page(
        "web/job.html", signed.viewer, title=f"{db_id} · job {job_id}", db_id=db_id, job=job,
        may_admin=may_admin, queue_path=_queue_path(db_id, job["queue"]), notice=_notice(),
    )


async def job_action(signed: SignedIn, db_id: str, job_id: int, action: str) -> Response:
    """Retry, cancel or delete one job; refusals (a running job cannot be retried: 409) are error pages."""
    await _csrf(signed)
    if action not in JOB_ACTIONS:
        raise JobNotFound(f"no job action {action!r}")
    _check_document(db_id)
    service = _jobs()
    job = await service.get(db_id, _job_id(job_id))
    await _require(signed, db_id, "jobs.admin", job["queue"])
    if action == "retry":
        await service.retry(db_id, job_id)
    elif action == "cancel":
        await service.cancel(db_id, job_id)
    else:
        await service.delete(db_id, job_id)
        return _redirect(_queue_path(db_id, job["queue"]) + "?" + urlencode({"done": "deleted"}))
    done = "retried" if action == "retry" else "cancelled"
    return _redirect(f"{_base(db_id)}/jobs/{job_id}?" + urlencode({"done": done}))


def _job_id(value: int) -> int:
    if not 0 < value < 2**63:
        raise JobNotFound(f"job {value} does not exist")
    return value


def _action_view(view: Any, action: str) -> Any:
    """``view`` bound to one action, under a name of its own (each rule is its own endpoint)."""

    async def bound(signed: SignedIn, **kwargs: Any) -> Response:
        response: Response = await view(signed, action=action, **kwargs)
        return response

    bound.__name__ = f"{view.__name__}_{action.replace('-', '_')}"
    return bound


def _checked(view: Any) -> Any:
    """A malformed queue name (400) or a job id no job can have (404) is refused with its page for
    anyone, signed in or not, as a malformed ``db_id`` is: what the path says is checked first."""

    @functools.wraps(view)
    async def wrapper(**kwargs: Any) -> Response:
        try:
            if "queue" in kwargs:
                model.queue_name(kwargs["queue"], "queue")
            if "job_id" in kwargs:
                _job_id(kwargs["job_id"])
        except SkaldError as exc:
            return await render_page("web/error.html", None, status=exc.status, title=exc.title, error=exc)
        response: Response = await view(**kwargs)
        return response

    return wrapper


# `<string:db_id>` spelled out: quart-schema reads a converted variable after a bare one as one
# variable (as in skald/jobs/routes.py).
J = "/ui/db/<string:db_id>/jobs"
RULES: list[tuple[str, Any, list[str]]] = [
    (J, page("jobs.admin")(queues_page), ["GET"]),
    (J + "/queues/<queue>", _checked(page("jobs.admin")(queue_page)), ["GET"]),
    *((f"{J}/queues/<queue>/{a}", _checked(page("jobs.admin")(_action_view(queue_action, a))), ["POST"])
      for a in QUEUE_ACTIONS),
    (J + "/<int:job_id>", _checked(page("jobs.enqueue")(job_page)), ["GET"]),
    *((f"{J}/<int:job_id>/{a}", _checked(page("jobs.admin")(_action_view(job_action, a))), ["POST"])
      for a in JOB_ACTIONS),
]
