"""The one grammar every client command shares: connection flags, output formats, errors, exit codes.

Decision: argparse, with shared parent parsers, rather than a CLI library. argparse already gives
usage errors with exit 2, ``--help`` with a description and an epilog of examples (with
:class:`HelpFormatter`), and subcommand trees; what was missing was that each module spelled its flags
and messages its own way. This module is where they are spelled once:

- ``--profile``, ``--url``, ``--token`` (:func:`connection_options`) on every command that talks to a
  server; flags win over ``SKALD_URL``/``SKALD_TOKEN``, which win over the profile;
- ``--output table|json|ndjson|csv`` and ``--pretty`` (:func:`output_options`);
- the document is always the first positional argument ``DB`` (:func:`document_argument`);
- one error line, ``skald: <status> <code>: <detail>`` for a refusal (:func:`error_line`);
- exit codes :data:`OK` 0, :data:`REFUSED` 1 (the server refused), :data:`USAGE` 2 (bad arguments or
  configuration), :data:`UNREACHABLE` 3 (no server answered).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING, Any, TypeAlias

from skald.client import Client, profiles
from skald.client.errors import ServerUnreachable, SkaldClientError

OK, REFUSED, USAGE, UNREACHABLE = 0, 1, 2, 3
OUTPUTS = ("table", "json", "ndjson", "csv")
# Client-side codes (status 0) that mean "no server answered", as opposed to one that refused.
_UNREACHABLE_CODES = frozenset({"unreachable", "reconnects_exhausted", "stream_ended"})

if TYPE_CHECKING:  # the class is generic only in typeshed
    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    Subparsers = argparse._SubParsersAction


class UsageError(Exception):
    """Bad arguments or configuration found after parsing (exit 2), e.g. an invalid URL in a profile."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks (descriptions are wrapped by :func:`command`)."""


def _wrap(text: str) -> str:
    """Paragraphs (split on blank lines) filled to 78 columns; lines starting with spaces kept as they are."""
    out = []
    for para in text.split("\n\n"):
        kept = any(line.startswith(" ") for line in para.splitlines()[1:])
        out.append(para if kept else textwrap.fill(para, 78))
    return "\n\n".join(out)


def command(
    subparsers: Subparsers,
    name: str,
    summary: str,
    *,
    description: str = "",
    examples: Sequence[str] = (),
    parents: Sequence[argparse.ArgumentParser] = (),
) -> argparse.ArgumentParser:
    """A subcommand with a one-line ``summary`` (in the parent's list), a description and examples."""
    epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples) if examples else None
    return subparsers.add_parser(
        name,
        help=summary,
        description=_wrap(f"{summary[0].upper()}{summary[1:]}." + (f"\n\n{description}" if description else "")),
        epilog=epilog,
        formatter_class=HelpFormatter,
        parents=list(parents),
    )


def connection_options() -> argparse.ArgumentParser:
    """Parent parser: where the server is and who we are."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("server")
    group.add_argument("--profile", default=None, help="client profile (default: the current one, or $SKALD_PROFILE)")
    group.add_argument(
        "--url", default=None, help="server URL, e.g. http://127.0.0.1:8080 (default: $SKALD_URL, profile)"
    )
    group.add_argument("--token", default=None, help="bearer token (default: $SKALD_TOKEN, profile)")
    return parent


def output_options(choices: Sequence[str] = OUTPUTS, default: str = "table") -> argparse.ArgumentParser:
    """Parent parser: ``--output`` (one JSON document per line unless ``--pretty``)."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("output")
    group.add_argument("--output", choices=list(choices), default=default, help="output format")
    group.add_argument("--pretty", action="store_true", help="indent JSON output (json only)")
    return parent


def document_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("db", metavar="DB", help="document id (e.g. notes)")


def endpoint(args: argparse.Namespace) -> profiles.Endpoint:
    """The server and token for ``args`` (flags, then environment, then profile); :class:`UsageError` if none."""
    try:
        return profiles.resolve(
            getattr(args, "profile", None), url=getattr(args, "url", None), token=getattr(args, "token", None)
        )
    except profiles.ProfileError as exc:
        raise UsageError(str(exc)) from None


def error_line(exc: SkaldClientError) -> str:
    """The one line (without ``skald: ``) for a client error."""
    if is_unreachable(exc):
        return f"unreachable: {exc.detail}"
    return f"{exc.status} {exc.code}: {exc.detail}"


def is_unreachable(exc: SkaldClientError) -> bool:
    return isinstance(exc, ServerUnreachable) or (exc.status == 0 and exc.code in _UNREACHABLE_CODES)


def exit_code(exc: SkaldClientError) -> int:
    return UNREACHABLE if is_unreachable(exc) else REFUSED


def fail(message: str, code: int = REFUSED) -> int:
    print(f"skald: {message}", file=sys.stderr, flush=True)
    return code


def run_client(args: argparse.Namespace, fn: Callable[[Client], int], **client_options: Any) -> int:
    """Resolve the endpoint, run ``fn(client)``; turn errors into one line and the documented exit code."""
    try:
        target = endpoint(args)
    except UsageError as exc:
        return fail(str(exc), USAGE)
    try:
        with Client(target.url, target.token, **client_options) as client:
            return fn(client)
    except SkaldClientError as exc:
        return fail(error_line(exc), exit_code(exc))
    except UsageError as exc:
        return fail(str(exc), USAGE)


# ---- output ---------------------------------------------------------------------------------------


def dump_json(value: Any, pretty: bool = False) -> str:
    return json.dumps(value, indent=2 if pretty else None, ensure_ascii=False)


def print_json(value: Any, pretty: bool = False, out: IO[str] | None = None) -> None:
    print(dump_json(value, pretty), file=out or sys.stdout, flush=True)


def cell(value: Any) -> str:
    """A value as table or CSV text: NULL, numbers as written, JSON for objects and lists."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def render_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], out: IO[str] | None = None) -> None:
    """A plain table: a header, a rule, numbers aligned right, then the row count."""
    stream = out or sys.stdout
    texts = [[cell(v) for v in row] for row in rows]
    widths = [len(c) for c in columns]
    for row in texts:
        widths = [max(w, len(t)) for w, t in zip(widths, row, strict=True)]
    numeric = [bool(rows) and all(_is_number(r[i]) or r[i] is None for r in rows) for i in range(len(columns))]

    def line(values: Sequence[str], align: Sequence[bool]) -> str:
        return "  ".join(v.rjust(w) if right else v.ljust(w) for v, w, right in zip(values, widths, align, strict=True))

    print(line(columns, numeric).rstrip(), file=stream)
    print("  ".join("-" * w for w in widths), file=stream)
    for row, raw in zip(texts, rows, strict=True):
        align = [_is_number(v) or (v is None and numeric[i]) for i, v in enumerate(raw)]
        print(line(row, align).rstrip(), file=stream)
    print(f"({len(rows)} row{'' if len(rows) == 1 else 's'})", file=stream, flush=True)


def render_rows(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    output: str,
    *,
    pretty: bool = False,
    whole: Any = None,
    out: IO[str] | None = None,
) -> None:
    """Rows in ``output`` format; ``json`` prints ``whole`` (default: the rows as objects) as one document."""
    stream = out or sys.stdout
    if output == "table":
        render_table(columns, rows, stream)
    elif output == "json":
        print_json(whole if whole is not None else [dict(zip(columns, r, strict=True)) for r in rows], pretty, stream)
    elif output == "ndjson":
        for row in rows:
            print(dump_json(dict(zip(columns, row, strict=True))), file=stream)
        stream.flush()
    else:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([cell(v) if v is not None else "" for v in row] for row in rows)
        stream.flush()
