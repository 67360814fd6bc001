"""``skald blob put FILE --db ID`` and ``skald blob get SHA256 --db ID -o FILE`` against a running server.

Bytes go straight between this machine and object storage through presigned
URLs; the skald server only hands out the URLs and verifies the upload.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from skald.client import Client, SkaldClientError, profiles
from skald.errors import SkaldError


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


def _client(args: argparse.Namespace) -> Client:
    url, token = server_target(args)
    return Client(url, token, timeout=300)


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


def _failed(exc: SkaldClientError) -> ClientError:
    return ClientError(f"{exc.status} {exc.code}: {exc.detail}" if exc.status else exc.detail)


def cmd_put(args: argparse.Namespace) -> int:
    """The upload flow is :meth:`skald.client.Client.upload_blob`; this adds the progress bar."""
    path: Path = args.file
    if not path.is_file():
        print(f"skald: {path} is not a file", file=sys.stderr)
        return 2
    try:
        with _client(args) as client, _progress(args) as progress:
            task = progress.add_task(f"upload {path.name}", total=path.stat().st_size)
            result = client.upload_blob(
                args.db,
                path,
                args.content_type,
                ref=args.ref,
                progress=lambda n: progress.advance(task, n),
            )
    except SkaldClientError as exc:
        raise _failed(exc) from None
    print(json.dumps(result))
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    out: Path = args.output
    try:
        with _client(args) as client, _progress(args) as progress:
            task = progress.add_task(f"download {out.name}", total=None)

            def advance(n: int, total: int | None) -> None:
                progress.update(task, advance=n, total=total)

            result = client.download_blob(args.db, args.sha256, out, progress=advance)
    except SkaldClientError as exc:
        raise _failed(exc) from None
    print(json.dumps(result))
    return 0
