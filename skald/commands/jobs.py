"""``skald jobs …``: the job queue of a document from the command line (docs/jobs.md).

Every subcommand takes ``--output table|json``. ``search --output json`` prints one
job per line, and ``bulk`` without ``--filter`` reads job ids from stdin (a bare
id or a JSON object with ``"id"`` per line), so ``skald jobs search … --output json |
skald jobs bulk DB retry`` acts on exactly what the search found.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from skald.client import Client
from skald.commands.grammar import Subparsers, connection_options, fail, output_options, run_client
from skald.commands.grammar import command as grammar_command

_SEARCH_FIELDS = ("queue", "state", "priority", "worker_id", "unique_key", "payload_contains", "error_contains",
                  "id_prefix")
_TABLE_COLUMNS = ("id", "queue", "state", "priority", "attempts", "run_at", "last_error")


EXAMPLES: dict[str, list[str]] = {
    "enqueue": ["skald jobs enqueue shop mail '{\"to\": \"a@example.org\"}' --priority high --unique-key welcome-7"],
    "inspect": ["skald jobs inspect shop 42 --output json"],
    "retry": ["skald jobs retry shop 42"], "cancel": ["skald jobs cancel shop 42"],
    "delete": ["skald jobs delete shop 42"], "move": ["skald jobs move shop 42 urgent"],
    "queues": ["skald jobs queues shop"], "pause": ["skald jobs pause shop mail"],
    "resume": ["skald jobs resume shop mail"], "clear": ["skald jobs clear shop mail"],
    "drain": ["skald jobs drain shop mail"],
    "search": ["skald jobs search shop --state dead --error-contains timeout --output json"],
    "bulk": ["skald jobs search shop --state dead --output json | skald jobs bulk shop retry",
             "skald jobs bulk shop delete --filter '{\"queue\": \"old\"}'"],
    "workers": ["skald jobs workers shop"],
}


def register(subparsers: Subparsers) -> None:
    jobs = subparsers.add_parser("jobs", help="job queues of a document (enqueue, inspect, search, bulk, …)")
    sub = jobs.add_subparsers(dest="jobs_command", metavar="ACTION")
    parents = [connection_options(), output_options(("table", "json"))]

    def command(name: str, summary: str, *, job: bool = False, queue: bool = False) -> argparse.ArgumentParser:
        parser = grammar_command(sub, name, summary, description="See docs/jobs.md.", examples=EXAMPLES[name],
                                 parents=parents)
        parser.add_argument("db", metavar="DB", help="document id (e.g. shop)")
        if job:
            parser.add_argument("id", type=int, help="job id")
        if queue:
            parser.add_argument("queue", help="queue name")
        return parser

    enqueue = command("enqueue", "enqueue one job (PAYLOAD is JSON, or - / nothing for stdin)", queue=True)
    enqueue.add_argument("payload", nargs="?", default="-", help="the job's payload (JSON; text otherwise)")
    enqueue.add_argument("--priority", choices=["critical", "high", "normal"], default=None, help="default normal")
    enqueue.add_argument("--run-at", default=None, help="RFC 3339 time, e.g. 2026-12-24T18:00:00Z")
    enqueue.add_argument("--max-attempts", type=int, default=None, help="attempts before dead (default 5)")
    enqueue.add_argument("--unique-key", default=None, help="refuse a duplicate while a job with it is live")
    enqueue.add_argument("--unique-for", type=float, default=None, metavar="SECONDS",
                         help="keep the key unique this long after enqueue, whatever the state")
    enqueue.add_argument("--tag", action="append", default=None, help="a tag (repeatable)")
    enqueue.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="longest run of an attempt")
    enqueue.set_defaults(func=cmd_enqueue)
    command("inspect", "show a job with every attempt's error", job=True).set_defaults(func=cmd_inspect)
    for name in ("retry", "cancel", "delete"):
        command(name, f"{name} a job", job=True).set_defaults(func=cmd_job_action, action=name)
    move = command("move", "move a job to another queue", job=True)
    move.add_argument("queue", help="the target queue")
    move.set_defaults(func=cmd_job_action, action="move")
    command("queues", "list queues with live counts per state").set_defaults(func=cmd_queues)
    for name, text in (("pause", "stop fetching from a queue"), ("resume", "fetch from a paused queue again"),
                       ("clear", "delete every job of a queue that is not running"),
                       ("drain", "delete a queue's waiting (queued, retrying) jobs")):
        command(name, text, queue=True).set_defaults(func=cmd_queue_action, action=name)
    search = command("search", "find jobs (json: one job per line, for `bulk`)")
    for field in _SEARCH_FIELDS:
        search.add_argument("--" + field.replace("_", "-"), dest=field, default=None,
                            help=f"filter: {field} (docs/jobs.md)")
    search.add_argument("--tag", action="append", default=None, help="jobs with this tag (repeatable: all of them)")
    search.add_argument("--has-errors", action="store_true", default=None, help="jobs with a failed attempt")
    search.add_argument("--sort", default=None, help="id, created_at, run_at, started_at, completed_at, …")
    search.add_argument("--order", choices=["asc", "desc"], default=None, help="default asc")
    search.add_argument("--limit", type=int, default=None, help="at most this many jobs (default: all)")
    search.set_defaults(func=cmd_search)
    bulk = command("bulk", "retry|requeue|cancel|delete|move|priority the jobs whose ids come on stdin")
    bulk.add_argument("action", choices=["retry", "requeue", "cancel", "delete", "move", "priority"],
                      help="what to do to each job")
    bulk.add_argument("--queue", default=None, help="move: the target queue")
    bulk.add_argument("--priority", choices=["critical", "high", "normal"], default=None, help="priority: the new one")
    bulk.add_argument("--filter", default=None, help="a JSON filter (docs/jobs.md) instead of ids on stdin")
    bulk.set_defaults(func=cmd_bulk)
    command("workers", "list workers seen in the last minute").set_defaults(func=cmd_workers)


def _print(value: Any, output: str, rows: list[dict[str, Any]] | None = None,
           columns: tuple[str, ...] = _TABLE_COLUMNS) -> None:
    if output == "json":
        print(json.dumps(value))
        return
    from rich.console import Console
    from rich.table import Table

    items = rows if rows is not None else [value] if isinstance(value, dict) else []
    table = Table(*columns)
    for item in items:
        table.add_row(*("" if item.get(c) is None else json.dumps(item[c]) if isinstance(item[c], dict | list)
                        else str(item[c]) for c in columns))
    Console().print(table)


def _read_json(raw: str) -> Any:
    text = sys.stdin.read() if raw == "-" else raw
    try:
        return json.loads(text) if text.strip() else None
    except ValueError:
        return text.rstrip("\n")  # not JSON: the text itself is the payload


def cmd_enqueue(args: argparse.Namespace) -> int:
    options = {"priority": args.priority, "run_at": args.run_at, "max_attempts": args.max_attempts,
               "unique_key": args.unique_key, "unique_for_seconds": args.unique_for, "tags": args.tag,
               "timeout_seconds": args.timeout}
    payload = _read_json(args.payload)

    def run(client: Client) -> int:
        _print(client.enqueue_job(args.db, args.queue, payload, **options), args.output)
        return 0

    return run_client(args, run)


def cmd_inspect(args: argparse.Namespace) -> int:
    def run(client: Client) -> int:
        job = client.get_job(args.db, args.id)
        _print(job, args.output)
        if args.output == "table":
            _print(None, "table", job["errors"], ("attempt", "at", "error"))
        return 0

    return run_client(args, run)


def cmd_job_action(args: argparse.Namespace) -> int:
    def run(client: Client) -> int:
        job = client.job_action(args.db, args.id, args.action, getattr(args, "queue", None))
        if job is None:  # delete
            _print({"id": args.id, "deleted": True}, args.output, [{"id": args.id, "state": "deleted"}])
        else:
            _print(job, args.output)
        return 0

    return run_client(args, run)


def cmd_queues(args: argparse.Namespace) -> int:
    def run(client: Client) -> int:
        queues = client.job_queues(args.db)
        rows = [{"name": q["name"], "paused": q["paused"], "concurrency": q["concurrency"], **q["counts"]}
                for q in queues]
        columns = ("name", "paused", "concurrency", "queued", "scheduled", "running", "retrying", "completed",
                   "dead", "cancelled")
        _print({"queues": queues}, args.output, rows, columns)
        return 0

    return run_client(args, run)


def cmd_queue_action(args: argparse.Namespace) -> int:
    def run(client: Client) -> int:
        answer = client.queue_action(args.db, args.queue, args.action) or {}
        _print(answer, args.output, [answer], tuple(answer) or ("name",))
        return 0

    return run_client(args, run)


def _filter(args: argparse.Namespace) -> dict[str, Any]:
    found: dict[str, Any] = {f: getattr(args, f) for f in _SEARCH_FIELDS if getattr(args, f) is not None}
    if args.tag:
        found["tags"] = args.tag
    if args.has_errors:
        found["has_errors"] = True
    return found


def cmd_search(args: argparse.Namespace) -> int:
    def run(client: Client) -> int:
        jobs: list[dict[str, Any]] = []
        cursor = None
        while args.limit is None or len(jobs) < args.limit:
            page_size = 1000 if args.limit is None else min(1000, args.limit - len(jobs))
            page = client.search_jobs(args.db, _filter(args), args.sort, args.order, page_size, cursor)
            jobs += page["jobs"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        if args.output == "json":
            for job in jobs:
                print(json.dumps(job))
        else:
            _print(None, "table", jobs)
        return 0

    return run_client(args, run)


def _stdin_ids() -> list[int]:
    ids = []
    for number, line in enumerate(sys.stdin, 1):
        text = line.strip()
        if not text:
            continue
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        value = value.get("id") if isinstance(value, dict) else value
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"stdin line {number} is neither a job id nor a job with an id")
        ids.append(value)
    return ids


def cmd_bulk(args: argparse.Namespace) -> int:
    if args.action == "move" and not args.queue:
        return fail("move needs --queue")
    if args.action == "priority" and not args.priority:
        return fail("priority needs --priority")
    ids: list[int] | None = None
    filter_: dict[str, Any] | None = None
    if args.filter is not None:
        try:
            filter_ = json.loads(args.filter)
        except ValueError:
            return fail("--filter must be a JSON object")
    else:
        try:
            ids = _stdin_ids()
        except ValueError as exc:
            return fail(str(exc))
        if not ids:
            _print({"action": args.action, "affected": 0}, args.output, [{"action": args.action, "affected": 0}],
                   ("action", "affected"))
            return 0

    def run(client: Client) -> int:
        affected = client.bulk_jobs(args.db, args.action, ids, filter_, args.queue, args.priority)
        answer = {"action": args.action, "affected": affected}
        _print(answer, args.output, [answer], ("action", "affected"))
        return 0

    return run_client(args, run)


def cmd_workers(args: argparse.Namespace) -> int:
    def run(client: Client) -> int:
        workers = client.job_workers(args.db)
        _print({"workers": workers}, args.output, workers, ("worker_id", "queues", "last_seen", "running"))
        return 0

    return run_client(args, run)
