-- Durable background jobs (GC, retention sweeps). Times are Unix epoch seconds (REAL) so the
-- queue can run on an injectable clock. A 'running' job whose lease_expires_at has passed was
-- left by a crash and is reclaimed by the worker.
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    type TEXT NOT NULL,
    payload_json TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'completed', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL DEFAULT 5,
    run_after REAL NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    last_error TEXT,
    lease_expires_at REAL
);
CREATE INDEX jobs_status_run_after ON jobs (status, run_after);

-- Content-addressed objects in the object store (key blobs/sha256/<hex>).
-- state: 'pending' (init-upload handed out a URL) or 'complete' (hash verified).
-- last_referenced_at: last claim or release touching this object (GC grace counts from
-- max(completed_at, last_referenced_at)); gc_marked_at: the mark of the GC run that plans to
-- delete it (a claim clears it, so the sweep's conditional delete then skips the row).
CREATE TABLE blob_objects (
    sha256 TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    content_type TEXT NOT NULL DEFAULT 'application/octet-stream',
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'complete')),
    created_at REAL NOT NULL,
    completed_at REAL,
    last_referenced_at REAL,
    gc_marked_at REAL
) WITHOUT ROWID;

-- Which documents completed (proved) an upload of an object: they may read it before claiming.
CREATE TABLE blob_uploads (
    sha256 TEXT NOT NULL,
    db_id TEXT NOT NULL,
    uploaded_at REAL NOT NULL,
    PRIMARY KEY (sha256, db_id)
) WITHOUT ROWID;
