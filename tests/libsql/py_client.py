"""Drives the real ``libsql-client`` (PyPI) against skald over WebSocket; run by tests/integration/libsql.

``python py_client.py URL TOKEN`` prints one JSON object per step. Runs in its own process: the
client is asyncio + aiohttp, the test suite is trio.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from libsql_client.client import LibsqlError
from libsql_client.create_client import create_client


def out(**fields: Any) -> None:
    print(json.dumps(fields, default=lambda v: v.hex() if isinstance(v, bytes) else str(v)), flush=True)


async def main(url: str, token: str) -> None:
    async with create_client(url, auth_token=token) as client:
        await client.execute("CREATE TABLE IF NOT EXISTS py (id INTEGER PRIMARY KEY, big INTEGER, data BLOB)")
        big = 2**62 + 11
        result = await client.execute("INSERT INTO py (big, data) VALUES (?, ?)", [big, b"\x00\xff\x10"])
        out(step="insert", rows_affected=result.rows_affected, last_insert_rowid=result.last_insert_rowid)
        row = (await client.execute("SELECT big, data FROM py WHERE id = ?", [result.last_insert_rowid])).rows[0]
        out(step="select", big=row[0], exact=row[0] == big, data=row[1])
        batch = await client.batch(["INSERT INTO py (big) VALUES (1)", ("INSERT INTO py (big) VALUES (?)", [2])])
        out(step="batch", affected=[r.rows_affected for r in batch])
        with client.transaction() as tx:
            await tx.execute("INSERT INTO py (big) VALUES (-1)")
            inside = (await tx.execute("SELECT count(*) FROM py WHERE big = -1")).rows[0][0]
            await tx.rollback()
        after = (await client.execute("SELECT count(*) FROM py WHERE big = -1")).rows[0][0]
        out(step="rollback", inside=inside, after=after)
        try:
            await client.execute("INSERT INTO py (id) VALUES (?)", [result.last_insert_rowid])
        except LibsqlError as exc:
            out(step="constraint", code=exc.code)
        try:
            await client.execute("DROP TABLE _skald_changes")
        except LibsqlError as exc:
            out(step="forbidden", code=exc.code)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
