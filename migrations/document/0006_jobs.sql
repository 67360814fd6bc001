-- Durable job queues (issue 21): jobs, every attempt's error, per-queue settings, workers seen,
-- and the resumable log of job state changes. Times are Unix milliseconds of the jobs clock
-- (skald/jobs/clock.py). See docs/jobs.md.
CREATE TABLE _skald_jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    payload TEXT NOT NULL,             -- JSON
    priority INTEGER NOT NULL,         -- 0 critical, 1 high, 2 normal (lower runs first)
    state TEXT NOT NULL,               -- queued | retrying | running | completed | dead | cancelled
    run_at_ms INTEGER NOT NULL,        -- not fetched before this
    created_at_ms INTEGER NOT NULL,
    started_at_ms INTEGER,             -- the current (or last) attempt's start
    completed_at_ms INTEGER,           -- completed, dead or cancelled
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    backoff TEXT NOT NULL,             -- JSON {"strategy", "base_seconds", "max_seconds"}
    unique_key TEXT,
    unique_until_ms INTEGER,           -- a duplicate is refused while live or until then
    tags TEXT NOT NULL DEFAULT '[]',   -- JSON array of strings
    timeout_seconds REAL,
    fence INTEGER NOT NULL DEFAULT 0,  -- grows by one on every fetch, never reset: the lease's fence
    lease_hash TEXT,                   -- sha256 hex of the current lease token
    lease_expires_ms INTEGER,
    worker_id TEXT,
    progress TEXT,                     -- JSON, from heartbeats
    checkpoint TEXT,                   -- JSON, kept across attempts
    result TEXT,                       -- JSON, from ack
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    error_count INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
-- Fetch: the next ready job of a queue, highest priority first, then oldest run_at.
CREATE INDEX _skald_jobs_ready ON _skald_jobs (queue, priority, run_at_ms, id)
    WHERE state IN ('queued', 'retrying');
CREATE INDEX _skald_jobs_running ON _skald_jobs (lease_expires_ms) WHERE state = 'running';
CREATE INDEX _skald_jobs_queue_state ON _skald_jobs (queue, state);
CREATE INDEX _skald_jobs_unique ON _skald_jobs (queue, unique_key) WHERE unique_key IS NOT NULL;

CREATE TABLE _skald_job_errors (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    error TEXT NOT NULL,
    backtrace TEXT,
    at_ms INTEGER NOT NULL
);
CREATE INDEX _skald_job_errors_job ON _skald_job_errors (job_id, id);

CREATE TABLE _skald_job_queues (
    name TEXT PRIMARY KEY,
    paused INTEGER NOT NULL DEFAULT 0,
    concurrency INTEGER,               -- at most this many running at once (NULL: no limit)
    throttle_rate INTEGER,             -- at most this many starts ...
    throttle_window_seconds REAL,      -- ... per this many seconds
    updated_at_ms INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE _skald_job_workers (
    worker_id TEXT PRIMARY KEY,
    queues TEXT NOT NULL,              -- JSON array: what it last asked for
    last_seen_ms INTEGER NOT NULL
) WITHOUT ROWID;

-- One row per state change; the SSE stream's ids. Pruned to the newest rows (docs/jobs.md).
CREATE TABLE _skald_job_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL,
    queue TEXT NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    at_ms INTEGER NOT NULL
);
