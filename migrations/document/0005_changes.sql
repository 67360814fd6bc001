-- Change feed (issue 9): one row per committed row change to a replicated table, written by
-- generated triggers in the same transaction as the change. See docs/sync.md.
CREATE TABLE _skald_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tbl TEXT NOT NULL,
    op TEXT NOT NULL,            -- insert | update | delete | schema | drop
    rowid_old INTEGER,           -- rowid tables: the row's rowid before the change (insert: the new one)
    rowid_new INTEGER,           -- rowid tables: the row's rowid after an update
    pk_json TEXT,                -- WITHOUT ROWID tables: primary key before the change (insert: after)
    row_json TEXT,               -- insert/update: the full row after the change
    sql TEXT                     -- schema: the table's CREATE statement
);
-- The triggers currently generated, with the table SQL they were generated for.
CREATE TABLE _skald_change_tables (
    tbl TEXT PRIMARY KEY,
    sql TEXT NOT NULL
) WITHOUT ROWID;
INSERT INTO _skald_meta (key, value) VALUES ('changes_pruned_through', '0');
