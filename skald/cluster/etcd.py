"""A small etcd v3 client over its JSON gateway (``/v3/...``), spoken with httpx from trio.

etcd's asyncio gRPC clients do not run under trio; the gateway is the same API as JSON, with
keys and values base64-encoded and 64-bit numbers as strings. Only what ownership needs is here:
leases (grant, keep-alive, revoke), a create-if-absent transaction, range reads, put and delete.
Every failure to reach etcd or an unexpected answer raises :class:`EtcdUnavailable`.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import AsyncGenerator
from typing import Any

import httpx

from skald.errors import DocumentUnavailable


class EtcdUnavailable(DocumentUnavailable):
    code = "cluster_unavailable"
    title = "The cluster's coordination store cannot be reached"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def prefix_end(prefix: str) -> str:
    """The ``range_end`` that selects every key starting with ``prefix`` (etcd's convention)."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return base64.b64encode(bytes(raw)).decode()


@dataclasses.dataclass(frozen=True)
class KeyValue:
    key: str
    value: str
    create_revision: int
    mod_revision: int
    lease: int


@dataclasses.dataclass(frozen=True)
class CreateResult:
    """What :meth:`EtcdClient.create` found: ``created`` and the key as it now stands."""

    created: bool
    current: KeyValue | None


def _kv(raw: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=_unb64(raw["key"]),
        value=_unb64(raw.get("value", "")),
        create_revision=int(raw.get("create_revision", 0)),
        mod_revision=int(raw.get("mod_revision", 0)),
        lease=int(raw.get("lease", 0)),
    )


class EtcdClient:
    """Talks to the first endpoint that answers; the others are tried when one fails."""

    def __init__(self, endpoints: list[str], *, timeout: float = 2.0) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint")
        self._endpoints = [e.rstrip("/") for e in endpoints]
        self._client = httpx.AsyncClient(timeout=timeout)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        last: Exception | None = None
        for index, endpoint in enumerate(list(self._endpoints)):
            try:
                response = await self._client.post(endpoint + path, json=body)
            except httpx.HTTPError as exc:
                last = exc
                continue
            if index:  # remember the endpoint that answered
                self._endpoints.insert(0, self._endpoints.pop(index))
            if response.status_code != 200:
                raise EtcdUnavailable(f"etcd {path} answered {response.status_code}: {response.text[:200]}")
            data: dict[str, Any] = response.json()
            if "error" in data:
                raise EtcdUnavailable(f"etcd {path}: {data['error']}")
            return data
        raise EtcdUnavailable(f"etcd cannot be reached ({type(last).__name__}: {last})")

    # ---- leases -----------------------------------------------------------------------------------

    async def grant(self, ttl: float) -> int:
        data = await self._call("/v3/lease/grant", {"TTL": str(max(1, round(ttl)))})
        return int(data["ID"])

    async def keep_alive(self, lease: int) -> float:
        """Renew ``lease`` once; return its remaining TTL in seconds (0 when it has already expired)."""
        data = await self._call("/v3/lease/keepalive", {"ID": str(lease)})
        result = data.get("result", data)
        return float(result.get("TTL", 0))

    async def revoke(self, lease: int) -> None:
        await self._call("/v3/lease/revoke", {"ID": str(lease)})

    # ---- keys -------------------------------------------------------------------------------------

    async def create(self, key: str, value: str, *, lease: int = 0) -> CreateResult:
        """Put ``key`` only if it does not exist, in one transaction; either way return the key's state."""
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            put["lease"] = str(lease)
        body = {
            "compare": [{"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
            "success": [{"request_put": put}, {"request_range": {"key": _b64(key)}}],
            "failure": [{"request_range": {"key": _b64(key)}}],
        }
        data = await self._call("/v3/kv/txn", body)
        created = bool(data.get("succeeded", False))
        responses = data.get("responses", [])
        kvs = responses[-1].get("response_range", {}).get("kvs", []) if responses else []
        return CreateResult(created, _kv(kvs[0]) if kvs else None)

    async def get(self, key: str) -> KeyValue | None:
        data = await self._call("/v3/kv/range", {"key": _b64(key)})
        kvs = data.get("kvs", [])
        return _kv(kvs[0]) if kvs else None

    async def get_prefix(self, prefix: str, *, keys_only: bool = False) -> list[KeyValue]:
        return (await self.snapshot(prefix, keys_only=keys_only))[0]

    async def snapshot(self, prefix: str, *, keys_only: bool = False) -> tuple[list[KeyValue], int]:
        """Every key under ``prefix`` and the store revision they were read at (to watch from)."""
        body: dict[str, Any] = {"key": _b64(prefix), "range_end": prefix_end(prefix)}
        if keys_only:
            body["keys_only"] = True
        data = await self._call("/v3/kv/range", body)
        revision = int(data.get("header", {}).get("revision", 0))
        return [_kv(raw) for raw in data.get("kvs", [])], revision

    async def watch(self, prefix: str, start_revision: int) -> AsyncGenerator[tuple[str, KeyValue]]:
        """Yield ``("PUT" | "DELETE", kv)`` for every change under ``prefix`` from ``start_revision``.

        One long-lived streaming request (the gateway sends one JSON object per line). Returns when
        the stream ends; raises :class:`EtcdUnavailable` when it cannot be opened.
        """
        create = {"key": _b64(prefix), "range_end": prefix_end(prefix), "start_revision": str(start_revision)}
        url = self._endpoints[0] + "/v3/watch"
        timeout = httpx.Timeout(5.0, read=None)
        try:
            async with self._client.stream("POST", url, json={"create_request": create}, timeout=timeout) as response:
                if response.status_code != 200:
                    raise EtcdUnavailable(f"etcd watch answered {response.status_code}")
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    result = json.loads(line).get("result", {})
                    for event in result.get("events", []):
                        yield event.get("type", "PUT"), _kv(event["kv"])
        except httpx.HTTPError as exc:
            raise EtcdUnavailable(f"etcd watch failed ({type(exc).__name__}: {exc})") from None

    async def put(self, key: str, value: str, *, lease: int = 0) -> int:
        """Put ``key``; return the store's revision after the put."""
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        data = await self._call("/v3/kv/put", body)
        return int(data.get("header", {}).get("revision", 0))

    async def put_if_owned(self, key: str, value: str, *, owner_key: str, owner_revision: int) -> bool:
        """Put ``key`` only while ``owner_key`` still has ``owner_revision`` as its create revision (a fenced write)."""
        body = {
            "compare": [
                {"key": _b64(owner_key), "target": "CREATE", "result": "EQUAL", "create_revision": str(owner_revision)}
            ],
            "success": [{"request_put": {"key": _b64(key), "value": _b64(value)}}],
            "failure": [],
        }
        data = await self._call("/v3/kv/txn", body)
        return bool(data.get("succeeded", False))

    async def delete(self, key: str) -> None:
        await self._call("/v3/kv/deleterange", {"key": _b64(key)})

    async def take(self, key: str) -> KeyValue | None:
        """Delete ``key`` and return what it held: of several callers racing, only one gets it."""
        data = await self._call("/v3/kv/deleterange", {"key": _b64(key), "prev_kv": True})
        kvs = data.get("prev_kvs", [])
        return _kv(kvs[0]) if kvs else None

    async def delete_if_owned(self, key: str, *, revision: int) -> bool:
        """Delete ``key`` only while its create revision is ``revision`` (ours, not a later owner's)."""
        body = {
            "compare": [{"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": str(revision)}],
            "success": [{"request_delete_range": {"key": _b64(key)}}],
            "failure": [],
        }
        data = await self._call("/v3/kv/txn", body)
        return bool(data.get("succeeded", False))
