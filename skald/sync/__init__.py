"""Sync: the change feed, snapshots, change pages and streams, and the local replica that follows them."""
