"""The job queue's errors, each with a stable problem+json ``code``."""

from __future__ import annotations

from skald.errors import Conflict, NotFound


class JobNotFound(NotFound):
    code = "job_not_found"
    title = "Job not found"


class QueueNotFound(NotFound):
    code = "queue_not_found"
    title = "Queue not found"


class JobLeaseMismatch(Conflict):
    """The lease presented is not the job's current one: stale (an earlier attempt), ended, or foreign."""

    code = "job_lease_mismatch"
    title = "Lease is not the job's current lease"


class JobStateConflict(Conflict):
    code = "job_state_conflict"
    title = "The job's state does not allow this"


class QueueBusy(Conflict):
    code = "queue_busy"
    title = "The queue has running jobs"
