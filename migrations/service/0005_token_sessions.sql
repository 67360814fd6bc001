-- Web sessions opened by pasting a token (/ui/login), beside OIDC sessions. A token session acts with
-- its token's scopes and ends with it: revoking (or deleting) the token ends the session. Its owner is
-- the token's owner, who need not be a row in users, so the owner's foreign key goes: SQLite cannot
-- drop a constraint, hence the rebuild (nothing references sessions).
CREATE TABLE sessions_new (
    id_hash TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    is_admin INTEGER NOT NULL DEFAULT 0,
    csrf TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    token_id TEXT REFERENCES tokens (id) ON DELETE CASCADE
) WITHOUT ROWID;
INSERT INTO sessions_new (id_hash, owner, is_admin, csrf, created_at, expires_at)
    SELECT id_hash, owner, is_admin, csrf, created_at, expires_at FROM sessions;
DROP TABLE sessions;
ALTER TABLE sessions_new RENAME TO sessions;
CREATE INDEX sessions_owner ON sessions (owner);
CREATE INDEX sessions_token ON sessions (token_id);
