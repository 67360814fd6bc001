"""Blob tests run against a local S3 API (moto, ``s3_endpoint`` in tests/conftest.py) and a live skald wired to it."""

from support.s3 import blob_server, s3_bucket

__all__ = ["blob_server", "s3_bucket"]
