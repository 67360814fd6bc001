"""``skald blob put FILE --db ID`` and ``skald blob get SHA256 --db ID -o FILE`` against a running server.

Bytes go straight between this machine and object storage through presigned
URLs; the skald server only hands out the URLs and verifies the upload.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from skald.client import profiles
from skald.errors import SkaldError

CHUNK = 1024 * 1024


class ClientError(SkaldError):
    code = "client_error"
    title = "Request failed"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    blob = subparsers.add_parser("blob", help="upload and download blobs through a running server")
    sub = blob.add_subparsers(dest="blob_command", metavar="ACTION")
    put = sub.add_parser("put", help="hash FILE, upload it to object storage, verify it")
    put.add_argument("file", type=Path)
    put.add_argument("--db", required=True, help="document id")
    put.add_argument("--content-type", default="application/octet-stream")
    put.add_argument("--ref", default=None, help="also claim the blob in the document under this ref")
    _connection_options(put)
    put.set_defaults(func=cmd_put)
    get = sub.add_parser("get", help="download a blob by SHA-256 (verified)")
    get.add_argument("sha256")
    get.add_argument("--db", required=True, help="document id")
    get.add_argument("-o", "--output", type=Path, required=True, help="file to write")
    _connection_options(get)
    get.set_defaults(func=cmd_get)


def _connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=None, help="server URL (default $SKALD_URL)")
    parser.add_argument("--token", default=None, help="bearer token (default $SKALD_TOKEN)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def server_target(args: argparse.Namespace) -> tuple[str, str]:
    """The server URL and token: flags first, then the client profile (``SKALD_URL`` / ``SKALD_TOKEN`` win there)."""
    url, token = args.url, args.token
    if not (url and token):
        try:
            endpoint = profiles.resolve()
        except profiles.NoProfile:
            endpoint = None
        url = url or (endpoint.url if endpoint else None)
        token = token or (endpoint.token if endpoint else None)
    if not url or not token:
        raise ClientError("give --url and --token, set SKALD_URL and SKALD_TOKEN, or configure a profile")
    return url.rstrip("/"), token


def _api(args: argparse.Namespace) -> httpx.Client:
    url, token = server_target(args)
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=300)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code >= 400:
        detail = body.get("detail") if isinstance(body, dict) else None
        code = body.get("code") if isinstance(body, dict) else None
        raise ClientError(f"{response.status_code} {code or ''}: {detail or response.text[:200]}")
    if not isinstance(body, dict):
        raise ClientError(f"unexpected response: {response.text[:200]}")
    return body


def _progress(args: argparse.Namespace) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=Console(stderr=True),
        disable=args.quiet,
        transient=True,
    )


def file_sha256(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def cmd_put(args: argparse.Namespace) -> int:
    path: Path = args.file
    if not path.is_file():
        print(f"skald: {path} is not a file", file=sys.stderr)
        return 2
    sha256, size = file_sha256(path)
    base = f"/api/v1/db/{args.db}/blobs"
    with _api(args) as api:
        init = _json(
            api.post(
                f"{base}/init-upload",
                json={"sha256": sha256, "size": size, "content_type": args.content_type},
            )
        )
        uploaded = not init["exists"]
        if uploaded:
            spec = init["upload"]
            with _progress(args) as progress, path.open("rb") as f:
                task = progress.add_task(f"upload {path.name}", total=size)

                def chunks() -> Iterator[bytes]:
                    while chunk := f.read(CHUNK):
                        progress.advance(task, len(chunk))
                        yield chunk

                headers = {**spec["headers"], "Content-Length": str(size)}
                r = httpx.request(
                    spec["method"], spec["url"], content=chunks(), headers=headers, timeout=None
                )
            if r.status_code >= 300:
                raise ClientError(f"object storage refused the upload: {r.status_code} {r.text[:200]}")
            _json(api.post(f"{base}/complete-upload", json={"sha256": sha256}))
        result: dict[str, Any] = {"sha256": sha256, "size": size, "uploaded": uploaded}
        if args.ref:
            _json(api.post(f"{base}/claim", json={"sha256": sha256, "ref": args.ref}))
            result["ref"] = args.ref
    print(json.dumps(result))
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    base = f"/api/v1/db/{args.db}/blobs"
    with _api(args) as api:
        info = _json(api.get(f"{base}/{args.sha256}/read-url"))
    out: Path = args.output
    partial = out.with_name(out.name + ".part")
    digest = hashlib.sha256()
    with _progress(args) as progress, httpx.stream("GET", info["url"], timeout=None) as r:
        if r.status_code != 200:
            raise ClientError(f"object storage answered {r.status_code}")
        task = progress.add_task(f"download {out.name}", total=info.get("size"))
        with partial.open("wb") as f:
            for chunk in r.iter_bytes(CHUNK):
                digest.update(chunk)
                f.write(chunk)
                progress.advance(task, len(chunk))
    if digest.hexdigest() != args.sha256:
        partial.unlink()
        raise ClientError(f"downloaded bytes hash to {digest.hexdigest()}, not {args.sha256}")
    partial.replace(out)
    print(json.dumps({"sha256": args.sha256, "size": info.get("size"), "path": str(out)}))
    return 0
