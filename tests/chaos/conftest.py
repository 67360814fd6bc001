"""Chaos tests that need object storage use the blob tests' local S3 API (moto)."""

from support.s3 import blob_server, s3_bucket, s3_endpoint

__all__ = ["blob_server", "s3_bucket", "s3_endpoint"]
