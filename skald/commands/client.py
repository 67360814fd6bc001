"""Client commands against a running server: ``config``, ``query``, ``watch``, ``publish``, ``subscribe``.

The shared grammar (connection flags, output formats, errors, exit codes) is :mod:`skald.commands.grammar`.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from skald.client import Client, profiles
from skald.client.errors import SkaldClientError
from skald.commands.grammar import (
    OK,
    USAGE,
    Subparsers,
    command,
    connection_options,
    document_argument,
    dump_json,
    fail,
    output_options,
    print_json,
    render_rows,
    run_client,
)
from skald.http.params import HEARTBEAT_MAX_SECONDS, HEARTBEAT_MIN_SECONDS

# Reconnects in a row before watch/subscribe give up (exit 3): backoff 0.2 s doubling, about 50 s in all,
# so a server restart is ridden out and a server that is gone is reported.
STREAM_RECONNECTS = 8

def register(subparsers: Subparsers) -> None:
    server = connection_options()
    config = command(
        subparsers,
        "config",
        "client profiles: server URL and token",
        description=f"Profiles live in {profiles.config_path()}. SKALD_PROFILE picks one; SKALD_URL and"
        " SKALD_TOKEN override its values; --profile, --url and --token override everything.",
        examples=[
            "skald config set url http://127.0.0.1:8080",
            "skald config set token skd_... --profile prod",
            "skald config profiles use prod",
        ],
    )
    csub = config.add_subparsers(dest="config_command", metavar="ACTION")
    profile_flag = argparse.ArgumentParser(add_help=False)
    profile_flag.add_argument("--profile", default=None, help="profile to change or show (default: the current one)")
    cset = command(
        csub,
        "set",
        "set url or token in a profile (created if new)",
        description="A url must be http://HOST[:PORT] or https://...; a profile name is 1-64 of [A-Za-z0-9._-].",
        examples=["skald config set url https://skald.example.com --profile prod"],
        parents=[profile_flag],
    )
    cset.add_argument("key", choices=profiles.KEYS, help="what to set")
    cset.add_argument("value", help="the URL or the token")
    cset.set_defaults(func=cmd_config_set)
    cget = command(csub, "get", "print one value of the active profile", examples=["skald config get url"],
                   parents=[profile_flag])
    cget.add_argument("key", choices=profiles.KEYS, help="what to print")
    cget.set_defaults(func=cmd_config_get)
    clist = command(csub, "list", "show the active profile (token masked)", examples=["skald config list"],
                    parents=[profile_flag])
    clist.set_defaults(func=cmd_config_list)
    prof = command(csub, "profiles", "list profiles or switch to one", examples=["skald config profiles list"])
    psub = prof.add_subparsers(dest="profiles_command", metavar="ACTION")
    command(psub, "list", "list profiles (* marks the current one)",
            examples=["skald config profiles list"]).set_defaults(func=cmd_profiles_list)
    use = command(
        psub,
        "use",
        "make an existing profile the current one",
        description="Refuses a profile that does not exist (a typo must not switch to an empty profile):"
        " create one with `skald config set url URL --profile NAME`.",
        examples=["skald config profiles use prod"],
    )
    use.add_argument("name", help="profile name")
    use.set_defaults(func=cmd_profiles_use)

    query = command(
        subparsers,
        "query",
        "run one SQL statement",
        description="Statements that write need --write: the server classifies the statement (the same"
        " classification that picks the token scope), so read-only PRAGMAs and EXPLAIN run without it.",
        examples=[
            "skald query notes 'SELECT id, title FROM items ORDER BY id'",
            "skald query notes 'SELECT * FROM items WHERE id = ?' --arg 3 --output json",
            "skald query notes 'PRAGMA table_info(items)'",
            "skald query notes 'INSERT INTO items (title) VALUES (?)' --arg milk --write",
        ],
        parents=[server, output_options()],
    )
    document_argument(query)
    query.add_argument("sql", help="one SQL statement")
    query.add_argument(
        "--arg", action="append", default=[], help="positional argument (JSON value or text), repeatable"
    )
    query.add_argument("--write", action="store_true", help="allow a statement that writes")
    query.set_defaults(func=cmd_query)

    watch = command(
        subparsers,
        "watch",
        "re-run a query whenever its result changes",
        description="Prints the result, then again each time it changes. A table redraws in place on a"
        " terminal, under a header with the time of the result. Exits 3 if the server cannot be reached"
        f" (or is lost for {STREAM_RECONNECTS} reconnects in a row).",
        examples=[
            "skald watch notes 'SELECT count(*) AS n FROM items'",
            "skald watch notes 'SELECT * FROM items' --output ndjson --max-events 2",
        ],
        parents=[server, output_options()],
    )
    document_argument(watch)
    watch.add_argument("sql", help="one read-only SQL statement")
    watch.add_argument("--arg", action="append", default=[], help="positional argument, repeatable")
    watch.add_argument(
        "--max-events", type=int, default=None, metavar="N", help="exit after N results (snapshot + updates)"
    )
    watch.set_defaults(func=cmd_watch)

    publish = command(
        subparsers,
        "publish",
        "publish a message to a topic",
        description="DATA that parses as JSON is published as JSON, other UTF-8 as text, anything else as"
        " bytes. Prints the stored message.",
        examples=[
            "skald publish notes sensors/1 '{\"t\": 21.5}'",
            "echo hello | skald publish notes greetings --text",
        ],
        parents=[server, output_options(("json",), "json")],
    )
    document_argument(publish)
    publish.add_argument("topic", help="topic, e.g. sensors/1")
    publish.add_argument("data", nargs="?", default="-", help="the payload; - or nothing reads stdin")
    form = publish.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="DATA must be JSON (default: JSON if it parses)")
    form.add_argument("--text", action="store_true", help="send DATA as text even if it parses as JSON")
    publish.add_argument("--content-type", default=None, help="content type stored with the message")
    publish.add_argument("--dedupe-key", default=None, help="publish at most once per key")
    publish.set_defaults(func=cmd_publish)

    subscribe = command(
        subparsers,
        "subscribe",
        "print messages matching topic filters",
        description="FILTERs use MQTT wildcards (+ one level, # the rest). Follows until interrupted,"
        " --max-events or --idle-timeout. Exits 3 if the server cannot be reached (or is lost for"
        f" {STREAM_RECONNECTS} reconnects in a row).",
        examples=[
            "skald subscribe notes 'sensors/+'",
            "skald subscribe notes '#' --since 0 --idle-timeout 1 --output text",
        ],
        parents=[server, output_options(("ndjson", "json", "text"), "ndjson")],
    )
    document_argument(subscribe)
    subscribe.add_argument("filters", nargs="+", metavar="FILTER", help="topic filter, e.g. sensors/+")
    subscribe.add_argument("--since", type=int, default=None, metavar="ID", help="replay messages after ID")
    subscribe.add_argument("--tail", type=int, default=None, metavar="N", help="replay the last N messages")
    subscribe.add_argument("--max-events", type=int, default=None, metavar="N", help="exit after N messages")
    subscribe.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="exit once no message came for SECONDS (e.g. after replaying --since)",
    )
    subscribe.set_defaults(func=cmd_subscribe)


# ---- config ---------------------------------------------------------------------------------------
def _profile_name(data: dict[str, Any], override: str | None) -> str:
    try:
        return profiles.check_name(profiles.active_name(data, override))
    except profiles.ProfileError as exc:
        raise _Usage(str(exc)) from None


class _Usage(Exception):
    pass


def _config(fn: Any) -> Any:
    """Config commands: a bad name or value is a usage error (exit 2) with one line."""

    def run(args: argparse.Namespace) -> int:
        try:
            code: int = fn(args)
        except (_Usage, profiles.ProfileError) as exc:
            return fail(str(exc), USAGE)
        return code

    return run


@_config
def cmd_config_set(args: argparse.Namespace) -> int:
    data = profiles.load()
    name = _profile_name(data, args.profile)
    value = profiles.check_url(args.value) if args.key == "url" else args.value.strip()
    if not value:
        raise _Usage(f"{args.key} must not be empty")
    data["profiles"].setdefault(name, {})[args.key] = value
    profiles.save(data)
    print(f"{name}.{args.key} set")
    return OK


@_config
def cmd_config_get(args: argparse.Namespace) -> int:
    data = profiles.load()
    value = data["profiles"].get(_profile_name(data, args.profile), {}).get(args.key)
    if value is None:
        return fail(f"{args.key} is not set")
    print(value)
    return OK


@_config
def cmd_config_list(args: argparse.Namespace) -> int:
    data = profiles.load()
    name = _profile_name(data, args.profile)
    values = data["profiles"].get(name, {})
    print(f"profile = {name}{'' if name in data['profiles'] else ' (does not exist yet)'}")
    for key in profiles.KEYS:
        value = values.get(key)
        if key == "token" and value:
            value = value[:8] + "…"
        print(f"{key} = {value if value is not None else '(not set)'}")
    print(f"file = {profiles.config_path()}")
    return OK


def cmd_profiles_list(args: argparse.Namespace) -> int:
    data = profiles.load()
    current = profiles.active_name(data)
    for name in sorted(set(data["profiles"]) | {current}):
        print(f"{'*' if name == current else ' '} {name}  {data['profiles'].get(name, {}).get('url', '')}")
    return OK


@_config
def cmd_profiles_use(args: argparse.Namespace) -> int:
    data = profiles.load()
    name = profiles.check_name(args.name)
    if name not in data["profiles"]:
        known = ", ".join(sorted(data["profiles"])) or "none yet"
        raise _Usage(
            f"no profile {name!r} (profiles: {known}); create it with `skald config set url URL --profile {name}`"
        )
    data["current"] = name
    profiles.save(data)
    print(f"using profile {name}")
    return OK


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


def render(result: dict[str, Any], output: str, pretty: bool = False) -> None:
    """A query result: rows in ``output`` format; a statement without columns reports its changes."""
    if not result.get("columns") and output == "table":
        print(f"{result.get('changes', 0)} row(s) changed", flush=True)
        return
    render_rows(result.get("columns") or [], result.get("rows") or [], output, pretty=pretty, whole=result)
    if result.get("truncated") and output == "table":
        print("(truncated: the server's row or byte limit was reached)", flush=True)


def cmd_query(args: argparse.Namespace) -> int:
    values = [parse_arg(a) for a in args.arg]

    def run(client: Client) -> int:
        try:
            # Without --write the server refuses (400 not_read_only) what its classification says writes,
            # before running it: no client-side guess about the SQL text.
            result = client.query(args.db, args.sql, values or None, read_only=not args.write)
        except SkaldClientError as exc:
            if exc.code == "not_read_only":
                return fail(f"{exc.status} {exc.code}: this statement writes: add --write to run it")
            raise
        render(dict(result), args.output, args.pretty)
        return OK

    return run_client(args, run)


def _probe(client: Client) -> None:
    """Fail at once (exit 3) when no server answers, instead of reconnecting to nothing."""
    client.health()


def cmd_watch(args: argparse.Namespace) -> int:
    values = [parse_arg(a) for a in args.arg]
    redraw = args.output == "table" and sys.stdout.isatty()

    def run(client: Client) -> int:
        _probe(client)
        shown = 0
        events = client.watch(args.db, args.sql, values or None)
        try:
            for event in events:
                if event.event == "error":  # a failing re-run: the watch goes on
                    data = event.data if isinstance(event.data, dict) else {}
                    print(f"skald: {data.get('status', 400)} {data.get('code', 'error')}: "
                          f"{data.get('detail', event.data)}", file=sys.stderr, flush=True)
                    continue
                if args.output == "table":
                    if redraw:
                        print("\x1b[2J\x1b[H", end="")
                    stamp = datetime.now(UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
                    print(f"skald watch {args.db} · {event.event} · {stamp}\n")
                render(event.data, args.output, args.pretty)
                if args.output == "table" and not redraw:
                    print()
                sys.stdout.flush()
                shown += 1
                if args.max_events is not None and shown >= args.max_events:
                    break
        finally:
            events.close()
        return OK

    return run_client(args, run, max_reconnects=STREAM_RECONNECTS)


# ---- publish / subscribe --------------------------------------------------------------------------
def cmd_publish(args: argparse.Namespace) -> int:
    raw = sys.stdin.buffer.read() if args.data == "-" else args.data.encode()
    payload: Any = None
    if args.json:
        try:
            payload = json.loads(raw)
        except ValueError as exc:
            return fail(f"DATA is not valid JSON: {exc}", USAGE)

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
        print_json(published, args.pretty)
        return OK

    return run_client(args, run)


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
        return fail("give --since or --tail, not both", USAGE)
    idle = args.idle_timeout
    # heartbeats wake the client up while nothing arrives, so the idle check can run; the server
    # refuses intervals under its floor (and over its ceiling) with a 400
    heartbeat = min(max(HEARTBEAT_MIN_SECONDS, idle / 4), HEARTBEAT_MAX_SECONDS) if idle is not None else None

    def run(client: Client) -> int:
        _probe(client)
        seen = 0
        events = client.subscribe(
            args.db, *args.filters, since_id=args.since, tail=args.tail, heartbeat=heartbeat, idle_timeout=idle
        )
        try:
            for event in events:
                if event.event == "idle":
                    break
                if args.output == "text":
                    data = event.data if isinstance(event.data, dict) else {}
                    body = data.get("payload", data.get("payload_text", data.get("payload_base64")))
                    print(f"{event.id} {event.event} {data.get('topic', '')} {json.dumps(body)}")
                else:  # ndjson and json alike: one event per line (--pretty indents json)
                    record = {"event": event.event, "id": event.id, "data": event.data}
                    print(dump_json(record, args.pretty and args.output == "json"))
                sys.stdout.flush()
                if event.event == "message":
                    seen += 1
                    if args.max_events is not None and seen >= args.max_events:
                        break
        finally:
            events.close()
        return OK

    return run_client(args, run, max_reconnects=STREAM_RECONNECTS)
