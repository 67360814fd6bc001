-- Blobs this document references (claims). The GC keeps every object referenced by any document.
CREATE TABLE _skald_blobs (
    sha256 TEXT NOT NULL,
    ref TEXT NOT NULL,
    claimed_at TEXT NOT NULL,
    PRIMARY KEY (sha256, ref)
) WITHOUT ROWID;
