-- People who signed in with OIDC, their server-side web sessions and pending logins.
CREATE TABLE users (
    owner TEXT PRIMARY KEY,
    issuer TEXT NOT NULL,
    subject TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    is_admin INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    last_login_at TEXT NOT NULL
) WITHOUT ROWID;

-- Only the SHA-256 of the session id (the cookie value) is stored.
CREATE TABLE sessions (
    id_hash TEXT PRIMARY KEY,
    owner TEXT NOT NULL REFERENCES users (owner) ON DELETE CASCADE,
    is_admin INTEGER NOT NULL DEFAULT 0,
    csrf TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX sessions_owner ON sessions (owner);

-- An authorization request in flight: consumed (deleted) by its callback, so a state works once.
CREATE TABLE login_flows (
    state_hash TEXT PRIMARY KEY,
    nonce TEXT NOT NULL,
    code_verifier TEXT NOT NULL,
    return_to TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
) WITHOUT ROWID;
