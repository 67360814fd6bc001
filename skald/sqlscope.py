"""Scope classes of SQL statements, decided by SQLite's authorizer.

A statement is classified by what SQLite reports while *preparing* it (every
table read or written, every function, pragma, DDL action, including the
actions of triggers it fires), never by its first keyword: ``WITH x AS (...)
DELETE ...`` is a write because the authorizer sees ``SQLITE_DELETE``.

Classes, in increasing order: ``READ`` (``query.read``), ``WRITE``
(``query.write``: INSERT/UPDATE/DELETE on user tables), ``ADMIN``
(``query.admin``: DDL and the rest) and ``FORBIDDEN`` (refused for everyone:
ATTACH/DETACH, ``load_extension``, transaction statements, temp schema
objects, PRAGMAs that change settings, VACUUM, and any write or DDL on skald's
capability tables: ``_skald_*`` and ``schema_migrations``).

Pure functions only; :mod:`skald.query` applies them to a ``DocConnection``
with ``conn.policy(...)``.
"""

from __future__ import annotations

import enum
import sqlite3

from skald.connection import Policy


class StatementClass(enum.IntEnum):
    READ = 1
    WRITE = 2
    ADMIN = 3
    FORBIDDEN = 4

    @property
    def action(self) -> str:
        """The token action needed to run a statement of this class."""
        return {1: "query.read", 2: "query.write", 3: "query.admin"}.get(int(self), "forbidden")


_READ_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE}
_DML_ACTIONS = {sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE}
_ALWAYS_FORBIDDEN = {
    sqlite3.SQLITE_ATTACH,
    sqlite3.SQLITE_DETACH,
    sqlite3.SQLITE_TRANSACTION,
    sqlite3.SQLITE_SAVEPOINT,
    # temp objects live on the shared writer connection and would outlive the request
    # (a TEMP TRIGGER would even fire on other clients' writes)
    sqlite3.SQLITE_CREATE_TEMP_INDEX,
    sqlite3.SQLITE_CREATE_TEMP_TABLE,
    sqlite3.SQLITE_CREATE_TEMP_TRIGGER,
    sqlite3.SQLITE_CREATE_TEMP_VIEW,
    sqlite3.SQLITE_DROP_TEMP_INDEX,
    sqlite3.SQLITE_DROP_TEMP_TABLE,
    sqlite3.SQLITE_DROP_TEMP_TRIGGER,
    sqlite3.SQLITE_DROP_TEMP_VIEW,
}
_DDL_ACTIONS = {
    sqlite3.SQLITE_CREATE_INDEX,
    sqlite3.SQLITE_CREATE_TABLE,
    sqlite3.SQLITE_CREATE_TRIGGER,
    sqlite3.SQLITE_CREATE_VIEW,
    sqlite3.SQLITE_DROP_INDEX,
    sqlite3.SQLITE_DROP_TABLE,
    sqlite3.SQLITE_DROP_TRIGGER,
    sqlite3.SQLITE_DROP_VIEW,
    sqlite3.SQLITE_ALTER_TABLE,
    sqlite3.SQLITE_REINDEX,
    sqlite3.SQLITE_ANALYZE,
    sqlite3.SQLITE_CREATE_VTABLE,
    sqlite3.SQLITE_DROP_VTABLE,
}
_FORBIDDEN_FUNCTIONS = {"load_extension"}
_SCHEMA_TABLES = {"sqlite_master", "sqlite_schema", "sqlite_temp_master", "sqlite_temp_schema"}

# PRAGMAs that take a table/index name argument and only report.
_ARG_READ_PRAGMAS = {
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "foreign_key_check",
    "integrity_check",
    "quick_check",
}
# PRAGMAs that are harmless to read without a value (``PRAGMA user_version``) but
# would change the connection or the file if given one.
_NOARG_READ_PRAGMAS = {
    "user_version",
    "application_id",
    "schema_version",
    "data_version",
    "page_count",
    "page_size",
    "freelist_count",
    "encoding",
    "foreign_keys",
    "journal_mode",
    "synchronous",
    "auto_vacuum",
    "collation_list",
    "function_list",
    "module_list",
    "pragma_list",
    "compile_options",
    "database_list",
}
# PRAGMAs that change the document's own header, not durability: admin.
_ADMIN_SET_PRAGMAS = {"user_version", "application_id"}
_ADMIN_PRAGMAS = {"optimize"}


def is_capability_table(name: str | None) -> bool:
    """True for skald's own tables (``_skald_*`` and ``schema_migrations``)."""
    if name is None:
        return False
    lowered = name.lower()
    return lowered.startswith("_skald_") or lowered == "schema_migrations"


def classify_action(
    action: int, arg1: str | None, arg2: str | None, db_name: str | None, source: str | None
) -> StatementClass:
    """The class one authorizer callback puts a statement in (the statement's class is the max)."""
    if action in _READ_ACTIONS:
        return StatementClass.READ
    if action == sqlite3.SQLITE_FUNCTION:
        return (
            StatementClass.FORBIDDEN if (arg2 or "").lower() in _FORBIDDEN_FUNCTIONS else StatementClass.READ
        )
    if action in _DML_ACTIONS:
        table = (arg1 or "").lower()
        if table in _SCHEMA_TABLES:
            # Only SQLite's own DDL code writes here (a direct write is refused by SQLite:
            # "table sqlite_master may not be modified"; ALTER TABLE ... RENAME also updates
            # sqlite_temp_master); the DDL action itself classifies the statement.
            return StatementClass.READ
        if db_name != "main":
            return StatementClass.FORBIDDEN
        if is_capability_table(table):
            return StatementClass.FORBIDDEN
        if table.startswith("sqlite_stat"):
            return StatementClass.ADMIN
        return StatementClass.WRITE
    if action == sqlite3.SQLITE_PRAGMA:
        return _classify_pragma((arg1 or "").lower(), arg2)
    if action in _ALWAYS_FORBIDDEN:
        return StatementClass.FORBIDDEN
    if action in _DDL_ACTIONS:
        if action in (sqlite3.SQLITE_ANALYZE, sqlite3.SQLITE_REINDEX):
            names = []  # statistics and index rebuilds do not change what a table holds
        elif action == sqlite3.SQLITE_ALTER_TABLE:
            names = [arg2]
        elif action == sqlite3.SQLITE_DROP_TRIGGER and (arg1 or "").lower().startswith("_skald_chg_"):
            # Dropping a user table drops the change feed's triggers on it (skald.changefeed
            # re-creates them while the table exists): judge by the table, not the trigger.
            names = [arg2]
        else:
            names = [arg1, arg2]
        if any(is_capability_table(n) for n in names):
            return StatementClass.FORBIDDEN
        if db_name not in (None, "main"):
            return StatementClass.FORBIDDEN
        return StatementClass.ADMIN
    return StatementClass.FORBIDDEN  # an action this code does not know: refuse


def _classify_pragma(name: str, value: str | None) -> StatementClass:
    if name in _ARG_READ_PRAGMAS:
        return StatementClass.READ
    if name in _NOARG_READ_PRAGMAS and value is None:
        return StatementClass.READ
    if name in _ADMIN_SET_PRAGMAS and value is not None:
        return StatementClass.ADMIN
    if name in _ADMIN_PRAGMAS and value is None:
        return StatementClass.ADMIN
    return StatementClass.FORBIDDEN


class ClassRecorder:
    """An authorizer policy that records the highest class seen and denies FORBIDDEN actions.

    With ``allowed`` set it also denies every action above ``allowed``: the
    enforcement policy used while a statement really runs.
    """

    def __init__(self, allowed: StatementClass = StatementClass.ADMIN) -> None:
        self.allowed = allowed
        self.highest: StatementClass | None = None
        self.denied: list[str] = []
        self.inserts = False  # the statement itself (not a trigger) inserts rows
        self.writes = False  # the statement itself changes rows of a user table

    def __call__(
        self, action: int, arg1: str | None, arg2: str | None, db_name: str | None, source: str | None
    ) -> int:
        cls = classify_action(action, arg1, arg2, db_name, source)
        if source is None and cls == StatementClass.WRITE and action in _DML_ACTIONS:
            self.writes = True
            self.inserts = self.inserts or action == sqlite3.SQLITE_INSERT
        if self.highest is None or cls > self.highest:
            self.highest = cls
        if cls > self.allowed:
            self.denied.append(describe_action(action, arg1, arg2))
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    @property
    def policy(self) -> Policy:
        return self


_ACTION_NAMES = {
    getattr(sqlite3, "SQLITE_" + name): name
    for name in [
        "CREATE_INDEX",
        "CREATE_TABLE",
        "CREATE_TEMP_INDEX",
        "CREATE_TEMP_TABLE",
        "CREATE_TEMP_TRIGGER",
        "CREATE_TEMP_VIEW",
        "CREATE_TRIGGER",
        "CREATE_VIEW",
        "DELETE",
        "DROP_INDEX",
        "DROP_TABLE",
        "DROP_TEMP_INDEX",
        "DROP_TEMP_TABLE",
        "DROP_TEMP_TRIGGER",
        "DROP_TEMP_VIEW",
        "DROP_TRIGGER",
        "DROP_VIEW",
        "INSERT",
        "PRAGMA",
        "READ",
        "SELECT",
        "TRANSACTION",
        "UPDATE",
        "ATTACH",
        "DETACH",
        "ALTER_TABLE",
        "REINDEX",
        "ANALYZE",
        "CREATE_VTABLE",
        "DROP_VTABLE",
        "FUNCTION",
        "SAVEPOINT",
        "RECURSIVE",
    ]
}


def describe_action(action: int, arg1: str | None, arg2: str | None) -> str:
    """A short human description of an authorizer action, for error details."""
    parts = [_ACTION_NAMES.get(action, str(action))]
    parts += [a for a in (arg1, arg2) if a]
    return " ".join(parts)
