"""Blob routes under ``/api/v1/db/{db_id}/blobs`` and the background job worker (GC).

``install`` registers the routes, the ``blobs`` and ``jobs`` services, and
starts the :class:`skald.db.background.JobWorker` in ``app.nursery`` once the
supervisor is running; ``after_serving`` cancels it.
"""

from __future__ import annotations

from typing import Any

import trio
from quart import request
from quart_trio import QuartTrio

from skald.auth.guard import requires
from skald.blobs.gc import GC_JOB_TYPE, GarbageCollector
from skald.blobs.objectstore import ObjectStore, storage_configured
from skald.blobs.service import BlobService, validate_ref, validate_sha256
from skald.db.background import JobQueue, JobWorker
from skald.errors import ValidationFailed
from skald.http.params import int_param
from skald.http.state import AppState, get_state

PREFIX = "/api/v1/db/<db_id>/blobs"


def install(app: QuartTrio, state: AppState) -> None:
    settings = state.settings
    store = ObjectStore(settings) if storage_configured(settings) else None
    service = BlobService(state.supervisor, store)
    queue = JobQueue(lambda: state.supervisor.service)
    worker = JobWorker(queue, registry=state.metrics.registry)
    state.blobs = service
    state.jobs = queue
    state.job_worker = worker
    # Not on a cluster node: its service DB knows only the objects uploaded through it and reads only
    # its own copies of documents, so it would take objects other nodes uploaded or reference for
    # garbage and delete them from the shared bucket. Blob GC waits for cluster-wide blob metadata.
    if store is not None and not settings.clustered:
        gc = GarbageCollector(
            state.supervisor, store, settings.blob_gc_grace_seconds, registry=state.metrics.registry
        )
        state.blob_gc = gc

        async def run_gc(payload: dict[str, Any]) -> None:
            await gc.run(payload)

        # Check hourly (or sooner for short test graces); each run deletes only what is past the grace.
        worker.register(GC_JOB_TYPE, run_gc, every=max(1.0, min(3600.0, settings.blob_gc_grace_seconds / 4)))

    scope = trio.CancelScope()

    async def run_worker() -> None:
        with scope:
            await worker.serve()

    @app.before_serving
    async def start_worker() -> None:
        app.nursery.start_soon(run_worker)

    @app.after_serving
    async def stop_worker() -> None:
        scope.cancel(reason="server stopping")

    app.add_url_rule(
        f"{PREFIX}/init-upload", endpoint="blobs.init_upload", view_func=init_upload_view, methods=["POST"]
    )
    app.add_url_rule(
        f"{PREFIX}/complete-upload",
        endpoint="blobs.complete_upload",
        view_func=complete_upload_view,
        methods=["POST"],
    )
    app.add_url_rule(
        f"{PREFIX}/<sha256>/read-url", endpoint="blobs.read_url", view_func=read_url_view, methods=["GET"]
    )
    app.add_url_rule(f"{PREFIX}/claim", endpoint="blobs.claim", view_func=claim_view, methods=["POST"])
    app.add_url_rule(f"{PREFIX}/release", endpoint="blobs.release", view_func=release_view, methods=["POST"])
    app.add_url_rule(PREFIX, endpoint="blobs.list", view_func=list_view, methods=["GET"])


def _service() -> BlobService:
    service: BlobService = get_state().blobs
    service.store  # noqa: B018 - 503 object_storage_unconfigured before anything else
    return service


async def _body() -> dict[str, Any]:
    body = await request.get_json(force=True, silent=False)
    if not isinstance(body, dict):
        raise ValidationFailed("request body must be a JSON object")
    return body


@requires("blob.upload")
async def init_upload_view(db_id: str) -> dict[str, Any]:
    service = _service()
    body = await _body()
    sha256 = validate_sha256(body.get("sha256"))
    size = body.get("size")
    if isinstance(size, float) and size.is_integer():  # JSON Schema's integer (and JSON's): 5.0 is one
        size = int(size)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValidationFailed("size must be a non-negative integer (bytes)")
    content_type = body.get("content_type", "application/octet-stream")
    if not isinstance(content_type, str) or not content_type or len(content_type) > 255:
        raise ValidationFailed("content_type must be a non-empty string")
    return await service.init_upload(db_id, sha256, size, content_type)


@requires("blob.upload")
async def complete_upload_view(db_id: str) -> dict[str, Any]:
    service = _service()
    body = await _body()
    return await service.complete_upload(db_id, validate_sha256(body.get("sha256")))


@requires("blob.read")
async def read_url_view(db_id: str, sha256: str) -> dict[str, Any]:
    service = _service()
    return await service.read_url(db_id, validate_sha256(sha256))


@requires("blob.claim")
async def claim_view(db_id: str) -> dict[str, Any]:
    service = _service()
    body = await _body()
    return await service.claim(db_id, validate_sha256(body.get("sha256")), validate_ref(body.get("ref")))


@requires("blob.release")
async def release_view(db_id: str) -> dict[str, Any]:
    service = _service()
    body = await _body()
    return await service.release(db_id, validate_sha256(body.get("sha256")), validate_ref(body.get("ref")))


@requires("blob.read")
async def list_view(db_id: str) -> dict[str, Any]:
    service = _service()
    sha256 = request.args.get("sha256")
    limit = min(int_param("limit", request.args.get("limit"), 1000, minimum=1), 10_000)
    refs = await service.list_refs(db_id, validate_sha256(sha256) if sha256 is not None else None, limit)
    return {"blobs": refs}
