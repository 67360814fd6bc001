"""A blob's size is any integral JSON number (``5.0`` too, as JSON Schema has it)."""

from __future__ import annotations

import hashlib

from support.live import LiveServer


async def test_an_integral_float_size_is_accepted(blob_server: LiveServer) -> None:
    data = b"hello"
    async with blob_server.client() as client:
        response = await client.post(
            "/api/v1/db/media/blobs/init-upload",
            json={"sha256": hashlib.sha256(data).hexdigest(), "size": float(len(data))},
        )
        fractional = await client.post(
            "/api/v1/db/media/blobs/init-upload",
            json={"sha256": hashlib.sha256(data).hexdigest(), "size": 4.5},
        )
    assert response.status_code == 200, response.text
    assert response.json()["size"] == 5 and isinstance(response.json()["size"], int)
    assert fractional.status_code == 400
