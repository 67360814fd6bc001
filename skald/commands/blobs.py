"""``skald blob put DB FILE`` and ``skald blob get DB SHA256 --to FILE`` against a running server.

Bytes go straight between this machine and object storage through presigned
URLs; the skald server only hands out the URLs and verifies the upload.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from skald.client import Client
from skald.commands.grammar import (
    OK,
    USAGE,
    Subparsers,
    command,
    connection_options,
    document_argument,
    fail,
    output_options,
    print_json,
    run_client,
)


def register(subparsers: Subparsers) -> None:
    blob = command(
        subparsers,
        "blob",
        "upload and download blobs through a running server",
        description="Bytes go straight between this machine and object storage through presigned URLs.",
        examples=["skald blob put notes photo.jpg --ref items/1", "skald blob get notes SHA256 --to photo.jpg"],
    )
    sub = blob.add_subparsers(dest="blob_command", metavar="ACTION")
    put = command(
        sub,
        "put",
        "hash a file, upload it to object storage, verify it",
        description="Prints the blob's record (sha256, size, content type) as JSON.",
        examples=["skald blob put notes photo.jpg --content-type image/jpeg --ref items/1"],
        parents=[connection_options(), output_options(("json",), "json")],
    )
    document_argument(put)
    put.add_argument("file", type=Path, help="file to upload")
    put.add_argument("--content-type", default="application/octet-stream", help="stored content type")
    put.add_argument("--ref", default=None, help="also claim the blob in the document under this ref")
    put.add_argument("--quiet", action="store_true", help="no progress bar")
    put.set_defaults(func=cmd_put)
    get = command(
        sub,
        "get",
        "download a blob by SHA-256 (verified)",
        examples=["skald blob get notes 9f86d081884c7d65... --to photo.jpg"],
        parents=[connection_options(), output_options(("json",), "json")],
    )
    document_argument(get)
    get.add_argument("sha256", help="the blob's SHA-256 (hex)")
    get.add_argument("-o", "--to", dest="to", type=Path, required=True, metavar="FILE", help="file to write")
    get.add_argument("--quiet", action="store_true", help="no progress bar")
    get.set_defaults(func=cmd_get)


def _progress(args: argparse.Namespace) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=Console(stderr=True),
        disable=args.quiet or not sys.stderr.isatty(),  # no bar (nor its blank line) in logs and pipes
        transient=True,
    )


def cmd_put(args: argparse.Namespace) -> int:
    """The upload flow is :meth:`skald.client.Client.upload_blob`; this adds the progress bar."""
    path: Path = args.file
    if not path.is_file():
        return fail(f"{path} is not a file", USAGE)

    def run(client: Client) -> int:
        with _progress(args) as progress:
            task = progress.add_task(f"upload {path.name}", total=path.stat().st_size)
            result = client.upload_blob(
                args.db,
                path,
                args.content_type,
                ref=args.ref,
                progress=lambda n: progress.advance(task, n),
            )
        print_json(result, args.pretty)
        return OK

    return run_client(args, run, timeout=300)


def cmd_get(args: argparse.Namespace) -> int:
    out: Path = args.to

    def run(client: Client) -> int:
        with _progress(args) as progress:
            task = progress.add_task(f"download {out.name}", total=None)

            def advance(n: int, total: int | None) -> None:
                progress.update(task, advance=n, total=total)

            result = client.download_blob(args.db, args.sha256, out, progress=advance)
        print_json(result, args.pretty)
        return OK

    return run_client(args, run, timeout=300)
