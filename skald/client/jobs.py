"""The job queue's client methods (docs/jobs.md), shared by :class:`Client` and :class:`AsyncClient`.

:func:`calls` builds each request once; :class:`JobsMethods` (blocking) and
:class:`AsyncJobsMethods` execute them, so the two clients have the same job API.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from skald.client._api import Call, default_owner

Job = dict[str, Any]
QUEUE_ACTIONS = ("pause", "resume", "clear", "drain")
JOB_ACTIONS = ("retry", "cancel", "move")


def _jobs(db_id: str) -> str:
    return f"/api/v1/db/{quote(db_id, safe='')}/jobs"


def _drop_none(body: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


class _Calls:
    """One :class:`Call` per job operation."""

    @staticmethod
    def enqueue(db_id: str, queue: str, payload: Any, options: Mapping[str, Any]) -> Call:
        return Call("POST", _jobs(db_id), json=_drop_none({"queue": queue, "payload": payload, **options}))

    @staticmethod
    def enqueue_batch(db_id: str, jobs: Sequence[Mapping[str, Any]]) -> Call:
        return Call("POST", _jobs(db_id) + "/batch", json={"jobs": [dict(job) for job in jobs]})

    @staticmethod
    def fetch(db_id: str, queues: Sequence[str], worker_id: str | None, lease_seconds: float | None,
              wait_seconds: float | None) -> Call:
        body = _drop_none({"queues": list(queues), "worker_id": worker_id or default_owner(),
                           "lease_seconds": lease_seconds, "wait_seconds": wait_seconds})
        return Call("POST", _jobs(db_id) + "/fetch", json=body)

    @staticmethod
    def heartbeat(db_id: str, worker_id: str, jobs: Sequence[Mapping[str, Any]], lease_seconds: float | None) -> Call:
        body = _drop_none({"worker_id": worker_id, "jobs": [dict(j) for j in jobs], "lease_seconds": lease_seconds})
        return Call("POST", _jobs(db_id) + "/heartbeat", json=body)

    @staticmethod
    def ack(db_id: str, job_id: int, lease: str, result: Any) -> Call:
        return Call("POST", f"{_jobs(db_id)}/{job_id}/ack", json=_drop_none({"lease": lease, "result": result}))

    @staticmethod
    def fail(db_id: str, job_id: int, lease: str, error: str, backtrace: str | None, checkpoint: Any) -> Call:
        body = _drop_none({"lease": lease, "error": error, "backtrace": backtrace, "checkpoint": checkpoint})
        return Call("POST", f"{_jobs(db_id)}/{job_id}/fail", json=body)

    @staticmethod
    def job(db_id: str, job_id: int, action: str | None, body: Mapping[str, Any] | None) -> Call:
        if action is None:
            return Call("GET", f"{_jobs(db_id)}/{job_id}")
        if action == "delete":
            return Call("DELETE", f"{_jobs(db_id)}/{job_id}")
        if action not in JOB_ACTIONS:
            raise ValueError(f"action must be one of {', '.join(JOB_ACTIONS)} or delete")
        return Call("POST", f"{_jobs(db_id)}/{job_id}/{action}", json=dict(body or {}))

    @staticmethod
    def queue(db_id: str, queue: str, action: str | None, settings: Mapping[str, Any] | None) -> Call:
        path = f"{_jobs(db_id)}/queues/{quote(queue, safe='')}"
        if action is None:
            return Call("PUT", path, json=dict(settings or {}))
        if action == "delete":
            return Call("DELETE", path)
        if action not in QUEUE_ACTIONS:
            raise ValueError(f"action must be one of {', '.join(QUEUE_ACTIONS)} or delete")
        return Call("POST", f"{path}/{action}")

    @staticmethod
    def search(db_id: str, filter: Mapping[str, Any] | None, sort: str | None, order: str | None,
               limit: int | None, cursor: str | None) -> Call:
        body = _drop_none({"filter": dict(filter) if filter else None, "sort": sort, "order": order,
                           "limit": limit, "cursor": cursor})
        return Call("POST", _jobs(db_id) + "/search", json=body)

    @staticmethod
    def bulk(db_id: str, action: str, ids: Sequence[int] | None, filter: Mapping[str, Any] | None,
             queue: str | None, priority: str | None) -> Call:
        body: dict[str, Any] = _drop_none({"action": action, "queue": queue, "priority": priority})
        if ids is not None:
            body["ids"] = list(ids)
        else:
            body["filter"] = dict(filter or {})
        return Call("POST", _jobs(db_id) + "/bulk", json=body)


calls = _Calls()


class JobsMethods:
    """The blocking client's job methods (see docs/jobs.md for every field)."""

    def _json(self, call: Call) -> Any:
        raise NotImplementedError  # the client's own

    def enqueue_job(self, db_id: str, queue: str, payload: Any = None, **options: Any) -> Job:
        """Enqueue one job; ``options``: priority, run_at, max_attempts, backoff, unique_key, ... ."""
        job: Job = self._json(calls.enqueue(db_id, queue, payload, options))
        return job

    def enqueue_jobs(self, db_id: str, jobs: Sequence[Mapping[str, Any]]) -> list[Job]:
        """Enqueue ``jobs`` in one transaction (all or none)."""
        return list(self._json(calls.enqueue_batch(db_id, jobs))["jobs"])

    def fetch_job(self, db_id: str, queues: Sequence[str], worker_id: str | None = None,
                  lease_seconds: float | None = None, wait_seconds: float | None = None) -> Job | None:
        """The next job (running under ``job["lease"]["token"]``), or None if none came in ``wait_seconds``."""
        job: Job | None = self._json(calls.fetch(db_id, queues, worker_id, lease_seconds, wait_seconds))
        return job

    def heartbeat_jobs(self, db_id: str, worker_id: str, jobs: Sequence[Mapping[str, Any]],
                       lease_seconds: float | None = None) -> list[dict[str, Any]]:
        """Extend leases (``jobs``: ``{"id", "lease", "progress"?, "checkpoint"?}``); each answer has ``cancel``."""
        return list(self._json(calls.heartbeat(db_id, worker_id, jobs, lease_seconds))["jobs"])

    def ack_job(self, db_id: str, job_id: int, lease: str, result: Any = None) -> Job:
        job: Job = self._json(calls.ack(db_id, job_id, lease, result))
        return job

    def fail_job(self, db_id: str, job_id: int, lease: str, error: str, backtrace: str | None = None,
                 checkpoint: Any = None) -> Job:
        job: Job = self._json(calls.fail(db_id, job_id, lease, error, backtrace, checkpoint))
        return job

    def get_job(self, db_id: str, job_id: int) -> Job:
        job: Job = self._json(calls.job(db_id, job_id, None, None))
        return job

    def job_action(self, db_id: str, job_id: int, action: str, queue: str | None = None) -> Job | None:
        """``retry``, ``cancel``, ``move`` (to ``queue``) or ``delete`` one job."""
        job: Job | None = self._json(calls.job(db_id, job_id, action, {"queue": queue} if queue else None))
        return job

    def job_queues(self, db_id: str) -> list[dict[str, Any]]:
        return list(self._json(Call("GET", _jobs(db_id) + "/queues"))["queues"])

    def queue_action(self, db_id: str, queue: str, action: str) -> dict[str, Any] | None:
        """``pause``, ``resume``, ``clear``, ``drain`` or ``delete`` a queue."""
        answer: dict[str, Any] | None = self._json(calls.queue(db_id, queue, action, None))
        return answer

    def configure_queue(self, db_id: str, queue: str, **settings: Any) -> dict[str, Any]:
        """Set ``concurrency``, ``throttle`` (``{"rate", "window_seconds"}``) or ``paused``."""
        answer: dict[str, Any] = self._json(calls.queue(db_id, queue, None, settings))
        return answer

    def search_jobs(self, db_id: str, filter: Mapping[str, Any] | None = None, sort: str | None = None,
                    order: str | None = None, limit: int | None = None, cursor: str | None = None) -> dict[str, Any]:
        """One page: ``{"jobs", "next_cursor"}``."""
        page: dict[str, Any] = self._json(calls.search(db_id, filter, sort, order, limit, cursor))
        return page

    def bulk_jobs(self, db_id: str, action: str, ids: Sequence[int] | None = None,
                  filter: Mapping[str, Any] | None = None, queue: str | None = None,
                  priority: str | None = None) -> int:
        """Apply ``action`` to jobs by ``ids`` or ``filter``; the number affected."""
        return int(self._json(calls.bulk(db_id, action, ids, filter, queue, priority))["affected"])

    def job_workers(self, db_id: str) -> list[dict[str, Any]]:
        return list(self._json(Call("GET", _jobs(db_id) + "/workers"))["workers"])


class AsyncJobsMethods:
    """The async client's job methods: the same as :class:`JobsMethods`."""

    async def _json(self, call: Call) -> Any:
        raise NotImplementedError  # the client's own

    async def enqueue_job(self, db_id: str, queue: str, payload: Any = None, **options: Any) -> Job:
        """Enqueue one job; ``options``: priority, run_at, max_attempts, backoff, unique_key, ... ."""
        job: Job = await self._json(calls.enqueue(db_id, queue, payload, options))
        return job

    async def enqueue_jobs(self, db_id: str, jobs: Sequence[Mapping[str, Any]]) -> list[Job]:
        return list((await self._json(calls.enqueue_batch(db_id, jobs)))["jobs"])

    async def fetch_job(self, db_id: str, queues: Sequence[str], worker_id: str | None = None,
                        lease_seconds: float | None = None, wait_seconds: float | None = None) -> Job | None:
        job: Job | None = await self._json(calls.fetch(db_id, queues, worker_id, lease_seconds, wait_seconds))
        return job

    async def heartbeat_jobs(self, db_id: str, worker_id: str, jobs: Sequence[Mapping[str, Any]],
                             lease_seconds: float | None = None) -> list[dict[str, Any]]:
        return list((await self._json(calls.heartbeat(db_id, worker_id, jobs, lease_seconds)))["jobs"])

    async def ack_job(self, db_id: str, job_id: int, lease: str, result: Any = None) -> Job:
        job: Job = await self._json(calls.ack(db_id, job_id, lease, result))
        return job

    async def fail_job(self, db_id: str, job_id: int, lease: str, error: str,
                       backtrace: str | None = None, checkpoint: Any = None) -> Job:
        job: Job = await self._json(calls.fail(db_id, job_id, lease, error, backtrace, checkpoint))
        return job

    async def get_job(self, db_id: str, job_id: int) -> Job:
        job: Job = await self._json(calls.job(db_id, job_id, None, None))
        return job

    async def job_action(self, db_id: str, job_id: int, action: str,
                         queue: str | None = None) -> Job | None:
        job: Job | None = await self._json(calls.job(db_id, job_id, action, {"queue": queue} if queue else None))
        return job

    async def job_queues(self, db_id: str) -> list[dict[str, Any]]:
        return list((await self._json(Call("GET", _jobs(db_id) + "/queues")))["queues"])

    async def queue_action(self, db_id: str, queue: str, action: str) -> dict[str, Any] | None:
        answer: dict[str, Any] | None = await self._json(calls.queue(db_id, queue, action, None))
        return answer

    async def configure_queue(self, db_id: str, queue: str, **settings: Any) -> dict[str, Any]:
        answer: dict[str, Any] = await self._json(calls.queue(db_id, queue, None, settings))
        return answer

    async def search_jobs(self, db_id: str, filter: Mapping[str, Any] | None = None,
                          sort: str | None = None, order: str | None = None, limit: int | None = None,
                          cursor: str | None = None) -> dict[str, Any]:
        page: dict[str, Any] = await self._json(calls.search(db_id, filter, sort, order, limit, cursor))
        return page

    async def bulk_jobs(self, db_id: str, action: str, ids: Sequence[int] | None = None,
                        filter: Mapping[str, Any] | None = None, queue: str | None = None,
                        priority: str | None = None) -> int:
        return int((await self._json(calls.bulk(db_id, action, ids, filter, queue, priority)))["affected"])

    async def job_workers(self, db_id: str) -> list[dict[str, Any]]:
        return list((await self._json(Call("GET", _jobs(db_id) + "/workers")))["workers"])
