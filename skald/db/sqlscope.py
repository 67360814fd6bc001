"""Scope classes of SQL statements, decided by SQLite's authorizer.

A statement is classified by what SQLite reports while *preparing* it (every
table read or written, every function, pragma, DDL action, including the
actions of triggers it fires), never by its first keyword: ``WITH x AS (...)
DELETE ...`` is a write because the authorizer sees ``SQLITE_DELETE``.

Classes, in increasing order: ``READ`` (``query.read``), ``WRITE``
(``query.write``: INSERT/UPDATE/DELETE on user tables), ``ADMIN``
(``query.admin``: DDL and the rest) and ``FORBIDDEN`` (refused for everyone:
ATTACH/DETACH, ``load_extension``, transaction statements, temp schema
objects, PRAGMAs that change settings, VACUUM, any function not in
:data:`ALLOWED_FUNCTIONS`, virtual tables of modules not in :data:`ALLOWED_MODULES`,
any write or DDL on skald's capability tables (``_skald_*`` and
``schema_migrations``), on ``sqlite_sequence`` or on the shadow tables of full-text
and r-tree indexes).

Pure functions only; :mod:`skald.query.service` applies them to a ``DocConnection``
with ``conn.policy(...)``.
"""

from __future__ import annotations

import enum
import sqlite3

from skald.db.connection import Policy


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
# Every SQL function user SQL may call, by name (the authorizer reports each call as
# SQLITE_FUNCTION with the name). An allow-list, not a deny-list: a function SQLite adds, or a
# module registers, stays refused until someone decides it is safe. Refused on purpose, from
# SQLite 3.40's ``PRAGMA function_list``:
#   load_extension   loads native code (also never enabled);
#   fts3_tokenizer   registers or returns a native pointer (SELECT fts3_tokenizer('simple',
#                    x'41...') then any fts3/fts4 read jumps to that address: SIGSEGV);
#   fts5             hands out a C API pointer, of no use from SQL;
#   rtreenode, rtreedepth   debugging decoders of raw r-tree node blobs the caller supplies;
#   rtreecheck       runs its own BEGIN/COMMIT; `skald doctor` runs it;
#   optimize         fts3/fts4's merge hidden in a SELECT (INSERT INTO t(t) VALUES('optimize') is the
#                    write that does it);
#   sqlite_log       writes into the server's error log.
ALLOWED_FUNCTIONS = frozenset(
    {
        # core scalar functions
        "abs", "changes", "char", "coalesce", "format", "glob", "hex", "ifnull", "iif", "instr",
        "last_insert_rowid", "length", "like", "likelihood", "likely", "lower", "ltrim", "max", "min",
        "nullif", "printf", "quote", "random", "randomblob", "replace", "round", "rtrim", "sign",
        "soundex", "sqlite_compileoption_get", "sqlite_compileoption_used", "sqlite_source_id",
        "sqlite_version", "substr", "substring", "subtype", "total_changes", "trim", "typeof",
        "unicode", "unlikely", "upper", "zeroblob",
        # aggregates and window functions
        "avg", "count", "group_concat", "sum", "total", "row_number", "rank", "dense_rank",
        "percent_rank", "cume_dist", "ntile", "lag", "lead", "first_value", "last_value", "nth_value",
        # date and time
        "date", "time", "datetime", "julianday", "unixepoch", "strftime", "current_date",
        "current_time", "current_timestamp",
        # math
        "acos", "acosh", "asin", "asinh", "atan", "atan2", "atanh", "ceil", "ceiling", "cos", "cosh",
        "degrees", "exp", "floor", "ln", "log", "log10", "log2", "mod", "pi", "pow", "power",
        "radians", "sin", "sinh", "sqrt", "tan", "tanh", "trunc",
        # JSON
        "json", "json_array", "json_array_length", "json_extract", "json_group_array",
        "json_group_object", "json_insert", "json_object", "json_patch", "json_quote", "json_remove",
        "json_replace", "json_set", "json_type", "json_valid", "->", "->>",
        # full-text search: MATCH and the auxiliary functions
        "match", "snippet", "offsets", "matchinfo", "highlight", "bm25", "fts5_source_id",
        # SQLite's own ALTER TABLE / DROP code calls these while rewriting the schema; they are
        # internal (not callable from user SQL: "no such function")
        "sqlite_rename_column", "sqlite_rename_table", "sqlite_rename_test", "sqlite_drop_column",
        "sqlite_rename_quotefix",
    }
)
# Virtual table modules CREATE VIRTUAL TABLE may use: full-text search and r-trees.
ALLOWED_MODULES = frozenset({"fts3", "fts4", "fts5", "fts5vocab", "fts4aux", "fts3tokenize", "rtree", "rtree_i32"})
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
    action: int,
    arg1: str | None,
    arg2: str | None,
    db_name: str | None,
    source: str | None,
    *,
    shadow: frozenset[str] = frozenset(),
    internal: bool = False,
) -> StatementClass:
    """The class one authorizer callback puts a statement in (the statement's class is the max).

    ``shadow`` holds the lower-cased names of the document's shadow tables (the tables an fts3/4/5
    or r-tree virtual table keeps its index in: ``PRAGMA table_list`` type ``shadow``). User SQL
    may read them but never write or alter them: one ``DELETE FROM ft_data`` corrupts the index.
    ``internal`` is true for statements a virtual table module prepares while the user's
    statement runs (fts5 writing its own ``ft_data``): those may write their shadow tables.
    """
    if action in _READ_ACTIONS:
        return StatementClass.READ
    if action == sqlite3.SQLITE_FUNCTION:
        return StatementClass.READ if (arg2 or "").lower() in ALLOWED_FUNCTIONS else StatementClass.FORBIDDEN
    if action in _DML_ACTIONS:
        table = (arg1 or "").lower()
        if table in _SCHEMA_TABLES:
            # Only SQLite's own DDL code writes here (a direct write is refused by SQLite:
            # "table sqlite_master may not be modified"; ALTER TABLE ... RENAME also updates
            # sqlite_temp_master); the DDL action itself classifies the statement.
            return StatementClass.READ
        if db_name != "main":
            return StatementClass.FORBIDDEN
        if is_capability_table(table) or table == "sqlite_sequence":
            # sqlite_sequence holds the AUTOINCREMENT counters of skald's own tables too
            # (_skald_messages, webhook_inbox): seq = 2^63-1 would make every later publish fail.
            # SQLite's own code updates it without asking the authorizer, except while DDL
            # renames or drops a table (ClassRecorder lets that through).
            return StatementClass.FORBIDDEN
        if table in shadow:
            return StatementClass.WRITE if internal else StatementClass.FORBIDDEN
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
            # arg1 is the database here; SQLite passes DROP COLUMN's column name where the
            # database name usually goes
            names, db_name = [arg2], arg1
        elif action == sqlite3.SQLITE_DROP_TRIGGER and (arg1 or "").lower().startswith("_skald_chg_"):
            # Dropping a user table drops the change feed's triggers on it (skald.sync.changefeed
            # re-creates them while the table exists): judge by the table, not the trigger.
            names = [arg2]
        elif action in (sqlite3.SQLITE_CREATE_VTABLE, sqlite3.SQLITE_DROP_VTABLE):
            if (arg2 or "").lower() not in ALLOWED_MODULES:
                return StatementClass.FORBIDDEN
            names = [arg1]
        else:
            names = [arg1, arg2]
        if any(is_capability_table(n) for n in names):
            return StatementClass.FORBIDDEN
        if not internal and any((n or "").lower() in shadow for n in names):
            # DROP TABLE ft_data, ALTER TABLE ft_data, a trigger or index on it: refused; the
            # module itself drops them when its virtual table is dropped.
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
    enforcement policy used while a statement really runs. ``shadow``: see
    :func:`classify_action`. Call :meth:`started` (a trace callback) when the
    statement starts running: every callback after that comes from a statement
    a virtual table module prepares for itself, not from the user's SQL.
    """

    def __init__(self, allowed: StatementClass = StatementClass.ADMIN, shadow: frozenset[str] = frozenset()) -> None:
        self.allowed = allowed
        self.shadow = shadow
        self.highest: StatementClass | None = None
        self.denied: list[str] = []
        self.inserts = False  # the statement itself (not a trigger) inserts rows
        self.writes = False  # the statement itself changes rows of a user table
        self.internal = False
        self.calls = 0  # callbacks from compiling the user's statement (none: a cached statement ran)
        self._table_ddl = False  # the statement renames or drops a table

    def started(self, _sql: str) -> None:
        """Trace callback: the user's statement is compiled (with its triggers and views) and runs."""
        self.internal = True

    def __call__(
        self, action: int, arg1: str | None, arg2: str | None, db_name: str | None, source: str | None
    ) -> int:
        if not self.internal:
            self.calls += 1
        if action in (sqlite3.SQLITE_ALTER_TABLE, sqlite3.SQLITE_DROP_TABLE):
            self._table_ddl = True
        if self._table_ddl and action in _DML_ACTIONS and (arg1 or "").lower() == "sqlite_sequence":
            # ALTER TABLE ... RENAME / DROP TABLE keep an AUTOINCREMENT table's counter in step;
            # the DDL action itself classifies the statement (and refuses capability tables).
            cls = StatementClass.READ
        else:
            cls = classify_action(action, arg1, arg2, db_name, source, shadow=self.shadow, internal=self.internal)
        if source is None and not self.internal and cls == StatementClass.WRITE and action in _DML_ACTIONS:
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
