"""Reading a document's jobs back in tests: every page of a search, through the real API."""

from __future__ import annotations

from typing import Any

import httpx


async def all_jobs(client: httpx.AsyncClient, jobs_path: str, queue: str) -> list[dict[str, Any]]:
    """Every job of ``queue`` under ``jobs_path`` (``/api/v1/db/{db}/jobs``), following the search cursor."""
    jobs: list[dict[str, Any]] = []
    cursor = None
    while True:
        body: dict[str, Any] = {"filter": {"queue": queue}, "limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = (await client.post(jobs_path + "/search", json=body)).json()
        jobs += page["jobs"]
        cursor = page["next_cursor"]
        if cursor is None:
            return jobs
