-- Webhook inbox, per-endpoint webhook settings, leases and their fencing counters.
--
-- The inbox is deliberately NOT a _skald_ table: users consume it by query and operators may
-- add their own columns (with defaults) to it, e.g. a "processed_at" flag, with
-- ALTER TABLE webhook_inbox ADD COLUMN ... (query.admin). Ingestion names its columns, so
-- extra columns keep working. See docs/webhooks-leases.md.
CREATE TABLE webhook_inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    method TEXT NOT NULL,
    headers TEXT NOT NULL,          -- JSON object, lower-case names, credentials redacted
    query_string TEXT NOT NULL DEFAULT '',
    content_type TEXT,
    body BLOB NOT NULL,
    received_at TEXT NOT NULL,      -- UTC, ISO 8601 with milliseconds
    verified TEXT,                  -- signature style that verified it (github|stripe|standard|hmac) or NULL
    UNIQUE (endpoint, delivery_id)
);

CREATE TABLE _skald_webhook_endpoints (
    endpoint TEXT PRIMARY KEY,
    config TEXT NOT NULL,           -- JSON: {"verify": {...} | null, "redact_headers": [...]}
    updated_at TEXT NOT NULL
) WITHOUT ROWID;

-- One row per resource ever leased; last_fence only grows and survives release and restarts.
CREATE TABLE _skald_fences (
    resource TEXT PRIMARY KEY,
    last_fence INTEGER NOT NULL
) WITHOUT ROWID;

-- The current (or last, if expired) holder of a resource. Released leases are deleted.
CREATE TABLE _skald_leases (
    resource TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    fence INTEGER NOT NULL,
    token_hash TEXT NOT NULL,       -- sha256 hex of the lease token (the token is shown once)
    ttl_seconds REAL NOT NULL,
    acquired_at_ms INTEGER NOT NULL,
    renewed_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL  -- lease clock (see skald/leases.py), Unix milliseconds
) WITHOUT ROWID;
