"""Blobs: content-addressed objects in S3-compatible storage, their references, and garbage collection."""
