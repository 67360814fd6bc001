-- Persistent MQTT sessions (issue 22): what a client that connected with clean session false
-- (3.1.1) or clean start false with a session expiry (5.0) finds again when it reconnects, also
-- after a restart. state_json holds its subscriptions (full filter -> QoS and the id after which
-- it began) and, per document, the cursor: every message id up to it was delivered (QoS 0) or
-- acknowledged (QoS 1). Times are Unix epoch seconds.
CREATE TABLE mqtt_sessions (
    client_id TEXT PRIMARY KEY,
    token_id TEXT NOT NULL,
    expiry_seconds REAL NOT NULL,
    state_json TEXT NOT NULL,
    disconnected_at REAL,
    updated_at REAL NOT NULL
);
