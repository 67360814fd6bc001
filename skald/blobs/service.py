"""Blobs: content-addressed objects in S3-compatible storage, referenced by documents.

The service database's ``blob_objects`` row says what exists in the store
(``pending`` after init-upload, ``complete`` once the stored bytes were read
back and hashed); a document's ``_skald_blobs`` rows say which objects it
references. See ``docs/blobs.md`` for the claim/GC protocol.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from skald.blobs.objectstore import ObjectStorageUnconfigured, ObjectStore, blob_key
from skald.db.connection import DocConnection
from skald.db.supervisor import Supervisor
from skald.errors import Conflict, NotFound, PayloadTooLarge, ValidationFailed

UPLOAD_URL_SECONDS = 3600
READ_URL_SECONDS = 900
MAX_REF_LENGTH = 512
MAX_SINGLE_PUT_BYTES = 5 * 1024**3  # S3's limit for one PUT; larger needs multipart (not offered yet)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")

Clock = Callable[[], float]


class BlobNotFound(NotFound):
    code = "blob_not_found"
    title = "Blob not found"


class BlobNotUploaded(Conflict):
    code = "blob_not_uploaded"
    title = "The object has not been uploaded yet"


class BlobHashMismatch(Conflict):
    code = "blob_hash_mismatch"
    title = "The uploaded object does not match the declared hash or size"


def validate_sha256(value: Any) -> str:
    if not isinstance(value, str) or not _SHA256.match(value):
        raise ValidationFailed("sha256 must be 64 lowercase hex characters")
    return value


def validate_ref(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_REF_LENGTH:
        raise ValidationFailed(f"ref must be a non-empty string of at most {MAX_REF_LENGTH} characters")
    return value


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class BlobService:
    """Blob operations for the routes; ``store`` is None when object storage is not configured."""

    def __init__(self, supervisor: Supervisor, store: ObjectStore | None, clock: Clock = time.time) -> None:
        self.supervisor = supervisor
        self._store = store
        self.clock = clock

    @property
    def store(self) -> ObjectStore:
        if self._store is None:
            raise ObjectStorageUnconfigured(
                "set SKALD_S3_ENDPOINT_URL (and credentials, bucket) or AWS credentials to use blobs"
            )
        return self._store

    async def _object_row(self, sha256: str) -> tuple[int, str, str] | None:
        row = await self.supervisor.service.read(
            lambda conn: conn.execute(
                "SELECT size, content_type, state FROM blob_objects WHERE sha256 = ?", (sha256,)
            ).fetchone()
        )
        return (int(row[0]), str(row[1]), str(row[2])) if row else None

    # ---- upload -------------------------------------------------------------------------------------

    async def init_upload(self, db_id: str, sha256: str, size: int, content_type: str) -> dict[str, Any]:
        """Return ``exists: true`` for a complete object, else a presigned PUT URL for it."""
        store = self.store
        if size > MAX_SINGLE_PUT_BYTES:
            raise PayloadTooLarge(f"blobs are limited to {MAX_SINGLE_PUT_BYTES} bytes (one S3 PUT)")
        now = self.clock()

        def op(conn: DocConnection) -> tuple[bool, int]:
            row = conn.execute("SELECT state, size FROM blob_objects WHERE sha256 = ?", (sha256,)).fetchone()
            if row is not None and row[0] == "complete":
                return True, int(row[1])
            # (Re)start an upload; a new init also restarts the GC grace of a pending object.
            conn.execute(
                "INSERT INTO blob_objects (sha256, size, content_type, state, created_at)"
                " VALUES (?, ?, ?, 'pending', ?) ON CONFLICT (sha256) DO UPDATE SET size = excluded.size,"
                " content_type = excluded.content_type,"
                " created_at = excluded.created_at, gc_marked_at = NULL",
                (sha256, size, content_type, now),
            )
            return False, size

        async with self.supervisor.open_document(db_id):
            exists, stored_size = await self.supervisor.service.write(op)
        if exists:
            return {"sha256": sha256, "size": stored_size, "exists": True}
        url = await store.presign_put(blob_key(sha256), content_type, UPLOAD_URL_SECONDS)
        return {
            "sha256": sha256,
            "size": size,
            "exists": False,
            "upload": {
                "method": "PUT",
                "url": url,
                "headers": {"Content-Type": content_type},
                "expires_in": UPLOAD_URL_SECONDS,
                "expires_at": _iso(now + UPLOAD_URL_SECONDS),
            },
        }

    async def complete_upload(self, db_id: str, sha256: str) -> dict[str, Any]:
        """Read the stored object back, hash it, and mark it complete if hash and size match.

        Raises :class:`BlobNotFound` without an init-upload, :class:`BlobNotUploaded`
        if nothing was stored yet and :class:`BlobHashMismatch` (the object is deleted)
        if the bytes differ from the declaration.
        """
        store = self.store
        async with self.supervisor.open_document(db_id):
            row = await self._object_row(sha256)
            if row is None:
                raise BlobNotFound(f"no upload of {sha256} was started; call init-upload first")
            size, content_type, state = row
            if state != "complete":
                measured = await store.hash_object(blob_key(sha256))
                if measured is None:
                    raise BlobNotUploaded(
                        f"object {sha256} is not in the store yet; PUT it to the upload URL"
                    )
                actual_hash, actual_size = measured
                if actual_hash != sha256 or actual_size != size:
                    await store.delete(blob_key(sha256))
                    await self.supervisor.service.write(
                        lambda conn: conn.execute(
                            "DELETE FROM blob_objects WHERE sha256 = ? AND state = 'pending'", (sha256,)
                        )
                    )
                    raise BlobHashMismatch(
                        "the stored object does not match; it was deleted, upload it again",
                        expected_sha256=sha256,
                        expected_size=size,
                        actual_sha256=actual_hash,
                        actual_size=actual_size,
                    )
            now = self.clock()

            def mark_complete(conn: DocConnection) -> None:
                if state != "complete":
                    found = conn.execute(
                        "UPDATE blob_objects SET state = 'complete', completed_at = ?, gc_marked_at = NULL"
                        " WHERE sha256 = ?",
                        (now, sha256),
                    ).rowcount
                    if not found:
                        # A GC sweep removed the pending row (and so the object) after we hashed
                        # the bytes: answering 200 would report an object that is gone.
                        raise BlobNotFound(
                            f"blob {sha256} was garbage-collected while its upload completed; upload it again"
                        )
                    # Only a caller whose bytes were verified here may read before claiming.
                    conn.execute(
                        "INSERT OR IGNORE INTO blob_uploads (sha256, db_id, uploaded_at) VALUES (?, ?, ?)",
                        (sha256, db_id, now),
                    )

            await self.supervisor.service.write(mark_complete)
        return {"sha256": sha256, "size": size, "content_type": content_type, "state": "complete"}

    # ---- read ---------------------------------------------------------------------------------------

    async def read_url(self, db_id: str, sha256: str) -> dict[str, Any]:
        """A presigned GET URL, if this document claims the blob or uploaded it itself."""
        store = self.store
        async with self.supervisor.open_document(db_id) as actor:
            claimed = await actor.read(
                lambda conn: conn.execute(
                    "SELECT 1 FROM _skald_blobs WHERE sha256 = ? LIMIT 1", (sha256,)
                ).fetchone()
            )
        row = await self.supervisor.service.read(
            lambda conn: conn.execute(
                "SELECT o.size, o.content_type, o.state, u.db_id FROM blob_objects o"
                " LEFT JOIN blob_uploads u ON u.sha256 = o.sha256 AND u.db_id = ? WHERE o.sha256 = ?",
                (db_id, sha256),
            ).fetchone()
        )
        if row is None or row[2] != "complete" or (claimed is None and row[3] is None):
            raise BlobNotFound(f"document {db_id} has no blob {sha256}")
        url = await store.presign_get(blob_key(sha256), READ_URL_SECONDS)
        return {
            "sha256": sha256,
            "size": row[0],
            "content_type": row[1],
            "url": url,
            "expires_in": READ_URL_SECONDS,
            "expires_at": _iso(self.clock() + READ_URL_SECONDS),
        }

    # ---- references ---------------------------------------------------------------------------------

    async def claim(self, db_id: str, sha256: str, ref: str) -> dict[str, Any]:
        """Record that ``db_id`` references ``sha256`` under ``ref``.

        Order matters for GC safety (docs/blobs.md): the reference is committed in
        the document first, then the object's row is touched in the service
        database; only if that touch finds the row is the claim reported done.
        """
        self.store  # noqa: B018 - a claim without object storage is refused like every blob route
        row = await self._object_row(sha256)
        if row is None or row[2] != "complete":
            raise BlobNotFound(f"blob {sha256} does not exist or its upload is not complete")
        claimed_at = _iso(self.clock())
        async with self.supervisor.open_document(db_id) as actor:
            inserted = await actor.write(
                lambda conn: (
                    conn.execute(
                        "INSERT OR IGNORE INTO _skald_blobs (sha256, ref, claimed_at) VALUES (?, ?, ?)",
                        (sha256, ref, claimed_at),
                    ).rowcount
                )
            )
            now = self.clock()
            touched = await self.supervisor.service.write(
                lambda conn: (
                    conn.execute(
                        "UPDATE blob_objects SET gc_marked_at = NULL,"
                        " last_referenced_at = max(coalesce(last_referenced_at, 0), ?)"
                        " WHERE sha256 = ? AND state = 'complete'",
                        (now, sha256),
                    ).rowcount
                )
            )
            if not touched:
                # GC removed the object between our check and the touch: undo and refuse.
                await actor.write(
                    lambda conn: (
                        conn.execute(
                            "DELETE FROM _skald_blobs WHERE sha256 = ? AND ref = ?", (sha256, ref)
                        ).rowcount
                    )
                )
                raise BlobNotFound(f"blob {sha256} was garbage-collected; upload it again")
        return {"sha256": sha256, "ref": ref, "claimed": bool(inserted)}

    async def release(self, db_id: str, sha256: str, ref: str) -> dict[str, Any]:
        """Drop the reference; the object's GC grace period starts now."""
        async with self.supervisor.open_document(db_id) as actor:
            removed = await actor.write(
                lambda conn: (
                    conn.execute(
                        "DELETE FROM _skald_blobs WHERE sha256 = ? AND ref = ?", (sha256, ref)
                    ).rowcount
                )
            )
        if removed:
            now = self.clock()
            await self.supervisor.service.write(
                lambda conn: conn.execute(
                    "UPDATE blob_objects SET last_referenced_at = max(coalesce(last_referenced_at, 0), ?)"
                    " WHERE sha256 = ?",
                    (now, sha256),
                )
            )
        return {"sha256": sha256, "ref": ref, "released": bool(removed)}

    async def list_refs(
        self, db_id: str, sha256: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        def op(conn: DocConnection) -> list[dict[str, Any]]:
            sql = "SELECT sha256, ref, claimed_at FROM _skald_blobs"
            args: tuple[Any, ...] = ()
            if sha256 is not None:
                sql += " WHERE sha256 = ?"
                args = (sha256,)
            sql += " ORDER BY sha256, ref LIMIT ?"
            return [
                {"sha256": r[0], "ref": r[1], "claimed_at": r[2]} for r in conn.execute(sql, (*args, limit))
            ]

        async with self.supervisor.open_document(db_id) as actor:
            refs = await actor.read(op)
        shas = sorted({r["sha256"] for r in refs})
        if shas:
            marks = ",".join("?" * len(shas))
            info = await self.supervisor.service.read(
                lambda conn: {
                    r[0]: (r[1], r[2])
                    for r in conn.execute(
                        f"SELECT sha256, size, content_type FROM blob_objects WHERE sha256 IN ({marks})", shas
                    )
                }
            )
            for r in refs:
                size, content_type = info.get(r["sha256"], (None, None))
                r["size"], r["content_type"] = size, content_type
        return refs
