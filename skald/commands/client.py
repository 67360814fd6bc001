"""Client commands against a running server: ``config``, ``query``, ``watch``, ``publish``, ``subscribe``."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from typing import Any

from skald.client import Client, profiles
from skald.client.errors import (
    Forbidden,
    ServerUnreachable,
    SkaldClientError,
    Unauthorized,
    is_invalid_sql,
)
from skald.http.params import HEARTBEAT_MAX_SECONDS, HEARTBEAT_MIN_SECONDS

_READ_FIRST = {"SELECT", "VALUES", "EXPLAIN"}
_WRITE_FIRST = {
    *("INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER", "VACUUM", "REINDEX", "ANALYZE"),
    *("ATTACH", "DETACH", "BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE"),
}
_WRITE_WORDS = re.compile(
    r"\b(INSERT|UPDATE|DELETE|REPLACE|CREATE|DROP|ALTER|ATTACH|DETACH|VACUUM|REINDEX)\b", re.I
)
_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)
_STRINGS = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"")


def is_read_only(sql: str) -> bool:
    """Conservative client-side check: True only for statements that plainly cannot write."""
    text = _STRINGS.sub("''", _COMMENTS.sub(" ", sql)).strip()
    words = text.split(None, 1)
    if not words:
        return True
    first = words[0].upper()
    if first == "PRAGMA":
        return "=" not in text and "(" not in text
    if first in _READ_FIRST or first == "WITH":
        return not _WRITE_WORDS.search(text)
    # Not SQL's way to start any statement: let the server answer "invalid SQL" rather than
    # asking for --write. Everything that can write starts with a keyword named here.
    return first not in _WRITE_FIRST


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    config = subparsers.add_parser("config", help="client profiles (server URL and token)")
    csub = config.add_subparsers(dest="config_command", metavar="ACTION")
    cset = csub.add_parser("set", help="set url or token in a profile")
    cset.add_argument("key", choices=profiles.KEYS)
    cset.add_argument("value")
    cset.add_argument("--profile", default=None)
    cset.set_defaults(func=cmd_config_set)
    cget = csub.add_parser("get", help="print one value of the active profile")
    cget.add_argument("key", choices=profiles.KEYS)
    cget.add_argument("--profile", default=None)
    cget.set_defaults(func=cmd_config_get)
    clist = csub.add_parser("list", help="show the active profile (token masked)")
    clist.add_argument("--profile", default=None)
    clist.set_defaults(func=cmd_config_list)
    prof = csub.add_parser("profiles", help="list or switch profiles")
    psub = prof.add_subparsers(dest="profiles_command", metavar="ACTION")
    psub.add_parser("list", help="list profiles").set_defaults(func=cmd_profiles_list)
    use = psub.add_parser("use", help="make NAME the current profile")
    use.add_argument("name")
    use.set_defaults(func=cmd_profiles_use)

    query = subparsers.add_parser("query", help="run one SQL statement")
    _common(query)
    query.add_argument("db")
    query.add_argument("sql")
    query.add_argument(
        "--arg", action="append", default=[], help="positional argument (JSON value or text), repeatable"
    )
    query.add_argument("--output", choices=["table", "json"], default="table")
    query.add_argument("--write", action="store_true", help="allow a statement that writes")
    query.set_defaults(func=cmd_query)

    watch = subparsers.add_parser("watch", help="re-run a query whenever its result changes")
    _common(watch)
    watch.add_argument("db")
    watch.add_argument("sql")
    watch.add_argument("--arg", action="append", default=[], help="positional argument, repeatable")
    watch.add_argument("--output", choices=["table", "json"], default="table")
    watch.add_argument(
        "--max-events", type=int, default=None, metavar="N", help="exit after N results (snapshot + updates)"
    )
    watch.set_defaults(func=cmd_watch)

    publish = subparsers.add_parser("publish", help="publish a message (DATA, or - / nothing for stdin)")
    _common(publish)
    publish.add_argument("db")
    publish.add_argument("topic")
    publish.add_argument("data", nargs="?", default="-")
    form = publish.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="DATA must be JSON (default: JSON if it parses)")
    form.add_argument("--text", action="store_true", help="send DATA as text even if it parses as JSON")
    publish.add_argument("--content-type", default=None)
    publish.add_argument("--dedupe-key", default=None)
    publish.set_defaults(func=cmd_publish)

    subscribe = subparsers.add_parser("subscribe", help="print messages matching FILTERs (MQTT wildcards)")
    _common(subscribe)
    subscribe.add_argument("db")
    subscribe.add_argument("filters", nargs="+")
    subscribe.add_argument("--since", type=int, default=None, metavar="ID", help="replay messages after ID")
    subscribe.add_argument("--tail", type=int, default=None, metavar="N", help="replay the last N messages")
    subscribe.add_argument("--output", choices=["text", "json"], default="json")
    subscribe.add_argument("--max-events", type=int, default=None, metavar="N", help="exit after N messages")
    subscribe.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="exit once no message came for SECONDS (e.g. after replaying --since)",
    )
    subscribe.set_defaults(func=cmd_subscribe)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default=None, help="profile name (default: current, or $SKALD_PROFILE)")


def fail(message: str) -> int:
    print(f"skald: {message}", file=sys.stderr)
    return 1


def describe(exc: SkaldClientError) -> str:
    """One line for a client error."""
    if isinstance(exc, ServerUnreachable):
        return f"server unreachable: {exc.detail}"
    if isinstance(exc, Unauthorized):
        return f"bad token ({exc.code}): {exc.detail}"
    if is_invalid_sql(exc):
        return f"invalid SQL ({exc.code}): {exc.detail}"
    if isinstance(exc, Forbidden):
        return f"not allowed ({exc.code}): {exc.detail}"
    return f"{exc.detail} ({exc.status} {exc.code})" if exc.status else f"{exc.detail} ({exc.code})"


def with_client(args: argparse.Namespace, fn: Callable[[Client], int]) -> int:
    """Resolve the profile, run ``fn(client)`` and turn client errors into one-line messages."""
    try:
        endpoint = profiles.resolve(getattr(args, "profile", None))
    except profiles.NoProfile as exc:
        return fail(str(exc))
    try:
        with Client(endpoint.url, endpoint.token) as client:
            return fn(client)
    except SkaldClientError as exc:
        return fail(describe(exc))
    except KeyboardInterrupt:
        return 130


# ---- config ---------------------------------------------------------------------------------------
def cmd_config_set(args: argparse.Namespace) -> int:
    data = profiles.load()
    name = profiles.active_name(data, args.profile)
    data["profiles"].setdefault(name, {})[args.key] = args.value
    profiles.save(data)
    print(f"{name}.{args.key} set")
    return 0


def cmd_config_get(args: argparse.Namespace) -> int:
    data = profiles.load()
    value = data["profiles"].get(profiles.active_name(data, args.profile), {}).get(args.key)
    if value is None:
        return fail(f"{args.key} is not set")
    print(value)
    return 0


def cmd_config_list(args: argparse.Namespace) -> int:
    data = profiles.load()
    name = profiles.active_name(data, args.profile)
    values = data["profiles"].get(name, {})
    print(f"profile = {name}")
    for key in profiles.KEYS:
        value = values.get(key)
        if key == "token" and value:
            value = value[:8] + "…"
        print(f"{key} = {value if value is not None else '(not set)'}")
    print(f"file = {profiles.config_path()}")
    return 0


def cmd_profiles_list(args: argparse.Namespace) -> int:
    data = profiles.load()
    current = profiles.active_name(data)
    for name in sorted(set(data["profiles"]) | {current}):
        print(f"{'*' if name == current else ' '} {name}  {data['profiles'].get(name, {}).get('url', '')}")
    return 0


def cmd_profiles_use(args: argparse.Namespace) -> int:
    data = profiles.load()
    data["current"] = args.name
    data["profiles"].setdefault(args.name, {})
    profiles.save(data)
    print(f"using profile {args.name}")
    return 0


# ---- query / watch --------------------------------------------------------------------------------
def parse_arg(raw: str) -> Any:
    """``--arg``: a JSON scalar (number, null, true/false, "string"), ``{"$base64": ...}`` or
    ``{"$int": ...}``; anything else (plain words, other JSON objects and arrays) is bound as text."""
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    if isinstance(value, list) or (isinstance(value, dict) and set(value) not in ({"$base64"}, {"$int"})):
        return raw
    return value


def render(result: dict[str, Any], output: str) -> None:
    if output == "json":
        print(json.dumps(result))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not result.get("columns"):
        console.print(f"{result.get('changes', 0)} row(s) changed")
        return
    table = Table(*result["columns"])
    for row in result.get("rows", []):
        table.add_row(
            *("NULL" if v is None else json.dumps(v) if isinstance(v, dict) else str(v) for v in row)
        )
    console.print(table)
    if result.get("truncated"):
        console.print("[yellow](truncated)[/yellow]")


def cmd_query(args: argparse.Namespace) -> int:
    if not args.write and not is_read_only(args.sql):
        return fail("this statement writes: add --write to run it")
    values = [parse_arg(a) for a in args.arg]

    def run(client: Client) -> int:
        render(dict(client.query(args.db, args.sql, values or None)), args.output)
        return 0

    return with_client(args, run)


def cmd_watch(args: argparse.Namespace) -> int:
    values = [parse_arg(a) for a in args.arg]
    redraw = args.output == "table" and sys.stdout.isatty()

    def run(client: Client) -> int:
        shown = 0
        events = client.watch(args.db, args.sql, values or None)
        try:
            for event in events:
                if event.event == "error":  # a failing re-run: the watch goes on
                    data = event.data if isinstance(event.data, dict) else {}
                    print(f"skald: {data.get('detail', event.data)} ({data.get('code', 'error')})", file=sys.stderr)
                    continue
                if redraw:
                    print("\x1b[2J\x1b[H", end="")
                render(event.data, args.output)
                sys.stdout.flush()
                shown += 1
                if args.max_events is not None and shown >= args.max_events:
                    break
        finally:
            events.close()
        return 0

    return with_client(args, run)


# ---- publish / subscribe --------------------------------------------------------------------------
def cmd_publish(args: argparse.Namespace) -> int:
    raw = sys.stdin.buffer.read() if args.data == "-" else args.data.encode()
    payload: Any = None
    if args.json:
        try:
            payload = json.loads(raw)
        except ValueError as exc:
            return fail(f"DATA is not valid JSON: {exc}")

    def run(client: Client) -> int:
        kwargs: dict[str, Any] = {"content_type": args.content_type, "dedupe_key": args.dedupe_key}
        # --json: DATA must be JSON; --text: always text. Otherwise DATA that is valid JSON is
        # published as JSON, other UTF-8 as text, anything else as bytes.
        if args.json:
            published = client.publish(args.db, args.topic, payload, **kwargs)
        else:
            try:
                text = raw.decode()
            except UnicodeDecodeError:
                published = client.publish(args.db, args.topic, data=raw, **kwargs)
            else:
                published = _publish_text(client, args, text, kwargs)
        print(json.dumps(published))
        return 0

    return with_client(args, run)


def _publish_text(client: Client, args: argparse.Namespace, text: str, kwargs: dict[str, Any]) -> Any:
    if not args.text:
        try:
            value = json.loads(text)
        except ValueError:
            pass
        else:
            return client.publish(args.db, args.topic, value, **kwargs)
    return client.publish(args.db, args.topic, text=text, **kwargs)


def cmd_subscribe(args: argparse.Namespace) -> int:
    if args.since is not None and args.tail is not None:
        return fail("give --since or --tail, not both")
    idle = args.idle_timeout
    # heartbeats wake the client up while nothing arrives, so the idle check can run; the server
    # refuses intervals under its floor (and over its ceiling) with a 400
    heartbeat = min(max(HEARTBEAT_MIN_SECONDS, idle / 4), HEARTBEAT_MAX_SECONDS) if idle is not None else None

    def run(client: Client) -> int:
        seen = 0
        events = client.subscribe(
            args.db, *args.filters, since_id=args.since, tail=args.tail, heartbeat=heartbeat, idle_timeout=idle
        )
        try:
            for event in events:
                if event.event == "idle":
                    break
                if args.output == "json":
                    print(json.dumps({"event": event.event, "id": event.id, "data": event.data}))
                else:
                    data = event.data if isinstance(event.data, dict) else {}
                    body = data.get("payload", data.get("payload_text", data.get("payload_base64")))
                    print(f"{event.id} {event.event} {data.get('topic', '')} {json.dumps(body)}")
                sys.stdout.flush()
                if event.event == "message":
                    seen += 1
                    if args.max_events is not None and seen >= args.max_events:
                        break
        finally:
            events.close()
        return 0

    return with_client(args, run)
