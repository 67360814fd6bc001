"""A small async wrapper over an S3-compatible object store (boto3).

boto3 is synchronous: every call runs in a worker thread through
``trio.to_thread.run_sync`` under one :class:`trio.CapacityLimiter`, so the
event loop never blocks on the network. Objects are content-addressed:
``blobs/sha256/<hex>``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
import botocore.exceptions
import trio
from botocore.config import Config

from skald.config import Settings
from skald.errors import ServiceUnavailable

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

T = TypeVar("T")

KEY_PREFIX = "blobs/sha256/"
_CHUNK = 1024 * 1024


class ObjectStorageUnconfigured(ServiceUnavailable):
    code = "object_storage_unconfigured"
    title = "Object storage is not configured"


class ObjectStorageUnavailable(ServiceUnavailable):
    code = "object_storage_unavailable"
    title = "Object storage is unreachable or refused the request"


@dataclasses.dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    last_modified: float


def blob_key(sha256: str) -> str:
    return KEY_PREFIX + sha256


def storage_configured(settings: Settings) -> bool:
    """True when an endpoint or credentials are set, or boto3 finds AWS credentials itself."""
    if settings.s3_endpoint_url or settings.s3_access_key_id:
        return True
    return boto3.session.Session().get_credentials() is not None


class ObjectStore:
    def __init__(self, settings: Settings, *, max_threads: int = 8) -> None:
        self.bucket = settings.s3_bucket
        self._client: S3Client = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=settings.s3_secret_access_key,
            config=Config(
                signature_version="s3v4", s3={"addressing_style": "path"}, retries={"max_attempts": 3}
            ),
        )
        self._limiter = trio.CapacityLimiter(max_threads)
        self._bucket_ready = False

    async def _call(self, fn: Callable[[], T]) -> T:
        def guarded() -> T:
            try:
                return fn()
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                raise ObjectStorageUnavailable(f"object storage: {exc}") from None

        if not self._bucket_ready:
            await trio.to_thread.run_sync(self._ensure_bucket, limiter=self._limiter)
        return await trio.to_thread.run_sync(guarded, limiter=self._limiter)

    def _ensure_bucket(self) -> None:
        # Create the bucket on first use when it is missing (local MinIO / moto quick start).
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as exc:
            if not _is_not_found(exc):
                raise ObjectStorageUnavailable(f"object storage: {exc}") from None
            try:
                self._client.create_bucket(Bucket=self.bucket)
            except botocore.exceptions.ClientError as create_exc:
                raise ObjectStorageUnavailable(f"cannot create bucket {self.bucket}: {create_exc}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise ObjectStorageUnavailable(f"object storage: {exc}") from None
        self._bucket_ready = True

    async def presign_put(self, key: str, content_type: str, expires: int) -> str:
        params = {"Bucket": self.bucket, "Key": key, "ContentType": content_type}
        return await self._call(lambda: self._client.generate_presigned_url("put_object", params, expires))

    async def presign_get(self, key: str, expires: int) -> str:
        params = {"Bucket": self.bucket, "Key": key}
        return await self._call(lambda: self._client.generate_presigned_url("get_object", params, expires))

    async def head(self, key: str) -> ObjectInfo | None:
        def head() -> ObjectInfo | None:
            try:
                r = self._client.head_object(Bucket=self.bucket, Key=key)
            except botocore.exceptions.ClientError as exc:
                if _is_not_found(exc):
                    return None
                raise
            return ObjectInfo(key, int(r["ContentLength"]), r["LastModified"].timestamp())

        return await self._call(head)

    async def hash_object(self, key: str) -> tuple[str, int] | None:
        """Stream the object and return ``(sha256 hex, size)``, or None if it does not exist."""

        def read() -> tuple[str, int] | None:
            try:
                body = self._client.get_object(Bucket=self.bucket, Key=key)["Body"]
            except botocore.exceptions.ClientError as exc:
                if _is_not_found(exc):
                    return None
                raise
            digest = hashlib.sha256()
            size = 0
            try:
                for chunk in body.iter_chunks(_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
            finally:
                body.close()
            return digest.hexdigest(), size

        return await self._call(read)

    async def delete(self, key: str) -> None:
        await self._call(lambda: self._client.delete_object(Bucket=self.bucket, Key=key))

    async def list(self, prefix: str = KEY_PREFIX) -> list[ObjectInfo]:
        def list_all() -> list[ObjectInfo]:
            out: list[ObjectInfo] = []
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    out.append(ObjectInfo(item["Key"], int(item["Size"]), item["LastModified"].timestamp()))
            return out

        return await self._call(list_all)

    async def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Store ``data`` directly (used by tests and tools; clients upload through presigned URLs)."""
        await self._call(
            lambda: self._client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        )


def _is_not_found(exc: Any) -> bool:
    if not isinstance(exc, botocore.exceptions.ClientError):
        return False
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return code in {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}
