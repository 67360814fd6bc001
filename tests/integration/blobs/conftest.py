"""Blob tests run against a local S3 API (moto) and a live skald wired to it."""

from support.s3 import blob_server, s3_bucket, s3_endpoint

__all__ = ["blob_server", "s3_bucket", "s3_endpoint"]
