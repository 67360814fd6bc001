"""``skald token create|list|revoke``: works on the data folder directly (server may be down)."""

from __future__ import annotations

import argparse
import json
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from skald.auth.scopes import Scope, ScopeError
from skald.auth.tokens import audit, create_token, list_tokens, parse_duration, revoke_token
from skald.cli import add_server_options
from skald.commands.server import settings_from_args
from skald.db.migrations import apply_migrations

T = TypeVar("T")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    token = subparsers.add_parser("token", help="manage machine tokens (on the data folder)")
    sub = token.add_subparsers(dest="token_command", metavar="ACTION")
    create = sub.add_parser("create", help="mint a token; the secret is printed once")
    add_server_options(create)
    create.add_argument("--scope", action="append", required=True, help="DB:ACTION[:PREFIX], repeatable")
    create.add_argument("--expires", default=None, help="lifetime like 30d, 12h (default: never)")
    create.add_argument("--label", default="")
    create.add_argument("--owner", default="cli")
    create.add_argument("--output", choices=["text", "json"], default="text")
    create.set_defaults(func=cmd_create)
    lst = sub.add_parser("list", help="list tokens (metadata only)")
    add_server_options(lst)
    lst.add_argument("--output", choices=["table", "json"], default="table")
    lst.set_defaults(func=cmd_list)
    revoke = sub.add_parser("revoke", help="revoke a token by id")
    add_server_options(revoke)
    revoke.add_argument("id")
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
        print(f"skald: {exc}")
        return 2

    def create(conn: sqlite3.Connection) -> tuple[str, dict[str, object]]:
        secret, record = create_token(conn, scopes=scopes, label=args.label, owner=args.owner, expires_in=expires)
        audit(conn, "token.created", actor="cli", subject=record.id, detail={"label": args.label})
        return secret, record.to_public()

    secret, public = _with_service_db(args, create)
    if args.output == "json":
        print(json.dumps({**public, "token": secret}))
    else:
        print(f"id:      {public['id']}\nscopes:  {', '.join(args.scope)}\nexpires: {public['expires_at'] or 'never'}")
        print(f"token:   {secret}\n(shown once: store it now)")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    records: list[dict[str, Any]] = _with_service_db(args, lambda conn: [r.to_public() for r in list_tokens(conn)])
    if args.output == "json":
        print(json.dumps(records, indent=2))
        return 0
    for r in records:
        scopes = " ".join(
            f"{s['db']}:{s['action']}" + (f":{s['resource_prefix']}" if s["resource_prefix"] else "")
            for s in r["scopes"]
        )
        print(f"{r['id']}  {r['state']:8} {r['label'] or '-':20} {r['expires_at'] or 'never':21} {scopes}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    def revoke(conn: sqlite3.Connection) -> bool:
        found = revoke_token(conn, args.id)
        if found:
            audit(conn, "token.revoked", actor="cli", subject=args.id)
        return found

    if not _with_service_db(args, revoke):
        print(f"skald: no token {args.id}")
        return 1
    print(f"revoked {args.id}")
    return 0
