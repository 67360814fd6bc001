"""Chaos tests of blobs use the same local S3 API and live skald as tests/integration/blobs."""

from support.s3 import blob_server, s3_bucket

__all__ = ["blob_server", "s3_bucket"]
