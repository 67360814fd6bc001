-- Durable pub/sub messages (issue 5).
-- AUTOINCREMENT: ids are never reused, even after retention deleted the newest rows,
-- so an SSE cursor (Last-Event-ID) always means the same message.
CREATE TABLE _skald_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,              -- JSON text, UTF-8 text, or raw bytes (see payload_form)
    payload_form TEXT NOT NULL CHECK (payload_form IN ('json', 'text', 'base64')),
    content_type TEXT,
    dedupe_key TEXT,
    created_at TEXT NOT NULL,           -- ISO 8601 UTC with milliseconds, sortable as text
    size INTEGER NOT NULL               -- payload bytes, for byte-based retention
);
CREATE INDEX _skald_messages_topic_id ON _skald_messages (topic, id);
CREATE UNIQUE INDEX _skald_messages_dedupe ON _skald_messages (topic, dedupe_key)
    WHERE dedupe_key IS NOT NULL;

-- One row (id = 1) per document: the retention policy and how far retention has pruned.
CREATE TABLE _skald_message_retention (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    max_age_seconds REAL,
    max_count INTEGER,
    max_bytes INTEGER,
    pruned_through INTEGER NOT NULL DEFAULT 0,   -- every id <= this may have been removed
    updated_at TEXT
);
