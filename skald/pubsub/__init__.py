"""Durable pub/sub: publish through group commit, fan-out, the SSE stream with replay, retention, topics."""
