"""``skald token create|list|revoke``: works on the data folder directly (server may be down)."""

from __future__ import annotations

import argparse
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from skald.auth.scopes import ACTIONS, Scope, ScopeError
from skald.auth.tokens import audit, create_token, list_tokens, parse_duration, revoke_token
from skald.cli import add_server_options
from skald.commands.grammar import OK, USAGE, Subparsers, command, fail, output_options, print_json, render_rows
from skald.commands.server import settings_from_args
from skald.db.migrations import apply_migrations

T = TypeVar("T")


def _actions_help() -> str:
    lines, line = [], "actions:"
    for action in (*ACTIONS, "*"):
        if len(line) + len(action) > 76:
            lines.append(line)
            line = "   "
        line += f" {action}"
    return "\n".join([*lines, line])


def register(subparsers: Subparsers) -> None:
    token = command(
        subparsers,
        "token",
        "manage machine tokens (on the data folder; the server may be down)",
        examples=[
            "skald token create --scope 'notes:query.read' --expires 30d --label reporting",
            "skald token list",
            "skald token revoke tok_...",
        ],
    )
    sub = token.add_subparsers(dest="token_command", metavar="ACTION")
    create = command(
        sub,
        "create",
        "mint a token; the secret is printed once",
        description="A scope is DB:ACTION[:PREFIX]: DB a document id or a glob (notes, team-*, *), PREFIX narrows"
        " it to resources (topics, stream paths, webhook endpoints, leases) starting with it.\n\n" + _actions_help(),
        examples=[
            "skald token create --scope 'notes:query.read'",
            "skald token create --scope 'notes:pub.publish:sensors/' --scope 'notes:pub.subscribe' --expires 12h",
            "skald token create --scope 'shop:webhook.ingest:github' --label github --output json",
        ],
    )
    add_server_options(create)
    create.add_argument("--scope", action="append", required=True, help="DB:ACTION[:PREFIX], repeatable")
    create.add_argument("--expires", default=None, help="lifetime like 30d, 12h (default: never)")
    create.add_argument("--label", default="", help="a name to recognise the token by")
    create.add_argument("--owner", default="cli", help="who the token is for (recorded, audited)")
    create.add_argument("--output", choices=["text", "json"], default="text", help="output format")
    create.add_argument("--pretty", action="store_true", help="indent JSON output")
    create.set_defaults(func=cmd_create)
    lst = command(
        sub,
        "list",
        "list tokens (metadata only, never secrets)",
        examples=["skald token list", "skald token list --output csv > tokens.csv"],
        parents=[output_options()],
    )
    add_server_options(lst)
    lst.set_defaults(func=cmd_list)
    revoke = command(sub, "revoke", "revoke a token by id", examples=["skald token revoke tok_0123abcd"])
    add_server_options(revoke)
    revoke.add_argument("id", help="token id (from `skald token list`)")
    revoke.set_defaults(func=cmd_revoke)


def _with_service_db(args: argparse.Namespace, fn: Callable[[sqlite3.Connection], T]) -> T:
    settings = settings_from_args(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(settings.service_db_path, isolation_level=None, timeout=10)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        apply_migrations(conn, "service")
        conn.execute("BEGIN IMMEDIATE")
        result = fn(conn)
        conn.execute("COMMIT")
        return result
    finally:
        conn.close()


def cmd_create(args: argparse.Namespace) -> int:
    try:
        scopes = [Scope.parse(s) for s in args.scope]
        expires = parse_duration(args.expires) if args.expires else None
    except (ScopeError, ValueError) as exc:
        return fail(str(exc), USAGE)

    def create(conn: sqlite3.Connection) -> tuple[str, dict[str, object]]:
        secret, record = create_token(conn, scopes=scopes, label=args.label, owner=args.owner, expires_in=expires)
        audit(conn, "token.created", actor="cli", subject=record.id, detail={"label": args.label})
        return secret, record.to_public()

    secret, public = _with_service_db(args, create)
    if args.output == "json":
        print_json({**public, "token": secret}, args.pretty)
    else:
        print(f"id:      {public['id']}\nscopes:  {', '.join(args.scope)}\nexpires: {public['expires_at'] or 'never'}")
        print(f"token:   {secret}\n(shown once: store it now)")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    records: list[dict[str, Any]] = _with_service_db(args, lambda conn: [r.to_public() for r in list_tokens(conn)])
    if args.output == "json":
        print_json(records, args.pretty)
        return OK
    columns = ["id", "state", "label", "owner", "expires_at", "scopes"]
    rows = [
        [
            r["id"],
            r["state"],
            r["label"] or "",
            r.get("owner") or "",
            r["expires_at"] or "never",
            " ".join(
                f"{s['db']}:{s['action']}" + (f":{s['resource_prefix']}" if s["resource_prefix"] else "")
                for s in r["scopes"]
            ),
        ]
        for r in records
    ]
    render_rows(columns, rows, args.output)
    return OK


def cmd_revoke(args: argparse.Namespace) -> int:
    def revoke(conn: sqlite3.Connection) -> bool:
        found = revoke_token(conn, args.id)
        if found:
            audit(conn, "token.revoked", actor="cli", subject=args.id)
        return found

    if not _with_service_db(args, revoke):
        return fail(f"404 token_not_found: no token {args.id}")
    print(f"revoked {args.id}")
    return OK
