"""Litestream, run by the node: one ``litestream replicate`` process replicating every owned document.

The node starts Litestream with an empty config and its control socket enabled, then registers a
document when it takes ownership and unregisters it when it lets go (the daemon's HTTP API on the
socket: ``POST /register``, ``/unregister``, ``/sync``). ``sync(path)`` with ``wait`` returns once
every committed transaction of the document is in S3: that is the ``durability = "replicated"``
acknowledgement. Restores run ``litestream restore`` as a short-lived process.

Litestream refuses to start while ``AWS_CA_BUNDLE`` is set (stack notes), so its environment is
built here, credentials included. The child gets ``PR_SET_PDEATHSIG``: a node killed with SIGKILL
takes its Litestream with it instead of leaving an orphan that keeps uploading.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
import urllib.parse
from pathlib import Path

import httpx
import structlog
import trio

from skald.config import Settings
from skald.errors import DocumentUnavailable

log = structlog.get_logger("skald.cluster.replication")

_PR_SET_PDEATHSIG = 1


class ReplicationFailed(DocumentUnavailable):
    code = "replication_failed"
    title = "The write was committed locally but its replication was not confirmed"


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def litestream_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    if settings.s3_access_key_id:
        env["AWS_ACCESS_KEY_ID"] = settings.s3_access_key_id
    if settings.s3_secret_access_key:
        env["AWS_SECRET_ACCESS_KEY"] = settings.s3_secret_access_key
    return env


def replica_url(settings: Settings, db_id: str, fence: int) -> str:
    """Where generation ``fence`` of ``db_id`` replicates: a prefix nobody else writes."""
    query = {"region": settings.s3_region, "force-path-style": "true"}
    if settings.s3_endpoint_url:
        query["endpoint"] = settings.s3_endpoint_url
    path = f"{settings.cluster_s3_prefix.strip('/')}/{db_id}/{fence:020d}"
    return f"s3://{settings.s3_bucket}/{path}?{urllib.parse.urlencode(query)}"


class Litestream:
    """The node's Litestream daemon; enter :meth:`serve` in a nursery (``nursery.start``)."""

    def __init__(self, settings: Settings, work_dir: Path) -> None:
        self.settings = settings
        self.work_dir = work_dir
        self.socket_path = work_dir / "litestream.sock"
        self._client: httpx.AsyncClient | None = None
        self.last_confirmed_sync: float | None = None  # wall time of the last confirmed sync
        self.sync_seconds: list[float] = []  # recent confirmation latencies (bounded)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start Litestream, report ready once its control socket listens, run until cancelled."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        config = self.work_dir / "litestream.yml"
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        config.write_text(f"socket:\n  enabled: true\n  path: {self.socket_path}\ndbs: []\n")
        # Popen on this (the main) thread, not trio's worker threads: PR_SET_PDEATHSIG fires when the
        # *thread* that forked the child ends, and trio's cached threads end after a few idle seconds.
        process = subprocess.Popen(  # noqa: ASYNC220 - fork/exec returns at once
            [self.settings.litestream_bin, "replicate", "-config", str(config), "-log-level", "warn"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=litestream_env(self.settings),
            preexec_fn=_die_with_parent,
        )
        assert process.stderr is not None
        stderr = trio.lowlevel.FdStream(os.dup(process.stderr.fileno()))
        process.stderr.close()
        transport = httpx.AsyncHTTPTransport(uds=str(self.socket_path))
        self._client = httpx.AsyncClient(transport=transport, base_url="http://litestream", timeout=35)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._log_stderr, stderr)
                # The socket exists once Litestream listens; it logs that only at info, so ask it instead.
                with trio.fail_after(10):
                    while True:
                        if process.poll() is not None:
                            raise RuntimeError(f"litestream exited at start ({process.returncode})")
                        try:
                            await self._client.get("/list")
                            break
                        except httpx.TransportError:
                            await trio.sleep(0.02)
                task_status.started()
                code = await trio.to_thread.run_sync(process.wait, abandon_on_cancel=True)
                raise RuntimeError(f"litestream exited ({code})")
        finally:
            with trio.CancelScope(shield=True):
                await self._client.aclose()
                if process.poll() is None:
                    process.terminate()
                    with trio.move_on_after(5):
                        await trio.to_thread.run_sync(process.wait, abandon_on_cancel=True)
                    if process.poll() is None:
                        process.kill()
                        await trio.to_thread.run_sync(process.wait)
                await stderr.aclose()

    async def _log_stderr(self, stderr: trio.lowlevel.FdStream) -> None:
        async for chunk in stderr:
            for line in chunk.decode(errors="replace").splitlines():
                if line.strip():
                    log.warning("litestream", line=line[:500])

    async def _post(self, path: str, body: dict[str, object]) -> dict[str, object]:
        if self._client is None:
            raise ReplicationFailed("litestream is not running")
        try:
            response = await self._client.post(path, json=body)
        except httpx.HTTPError as exc:
            raise ReplicationFailed(f"litestream {path}: {type(exc).__name__}: {exc}") from None
        data: dict[str, object] = response.json()
        if response.status_code != 200 or "error" in data:
            raise ReplicationFailed(f"litestream {path}: {data.get('error', response.status_code)}")
        return data

    async def databases(self) -> list[dict[str, object]]:
        """Litestream's view of each registered database (path, status, last_sync_at)."""
        if self._client is None:
            return []
        try:
            response = await self._client.get("/list")
            found = response.json().get("databases", [])
        except (httpx.HTTPError, ValueError):
            return []
        return [d for d in found if isinstance(d, dict)]

    async def register(self, path: Path, url: str) -> None:
        await self._post("/register", {"path": str(path), "replica_url": url})

    async def unregister(self, path: Path) -> None:
        await self._post("/unregister", {"path": str(path)})

    async def sync(self, path: Path, *, wait_seconds: float = 30) -> int:
        """Wait until every committed transaction of ``path`` is in S3; return the replicated txid."""
        started = time.perf_counter()
        data = await self._post("/sync", {"path": str(path), "wait": True, "timeout": max(1, int(wait_seconds))})
        self.last_confirmed_sync = time.time()
        self.sync_seconds = [*self.sync_seconds[-255:], time.perf_counter() - started]
        txid = data.get("replicated_txid", 0)
        return int(txid) if isinstance(txid, int) else 0

    async def restore(self, url: str, out: Path) -> bool:
        """Restore the replica at ``url`` into ``out``; False when that replica has no backup yet."""
        out.parent.mkdir(parents=True, exist_ok=True)
        result = await trio.run_process(
            [self.settings.litestream_bin, "restore", "-if-replica-exists", "-o", str(out), url],
            env=litestream_env(self.settings),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        if result.returncode != 0:
            raise ReplicationFailed(f"litestream restore failed: {result.stderr.decode(errors='replace')[-500:]}")
        return await trio.Path(out).exists()
