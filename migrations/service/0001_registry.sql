-- The document registry: which documents this node serves.
CREATE TABLE documents (
    db_id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL
) WITHOUT ROWID;
