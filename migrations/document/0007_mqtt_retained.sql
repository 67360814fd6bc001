-- MQTT retained messages (issue 22): one per topic, a copy of the message that set it (so a
-- retention policy pruning the log does not remove the value a device last reported).
-- An empty retained publish deletes the row.
CREATE TABLE _skald_mqtt_retained (
    topic TEXT PRIMARY KEY,
    message_id INTEGER NOT NULL,
    payload BLOB NOT NULL,
    payload_form TEXT NOT NULL,
    content_type TEXT,
    created_at TEXT NOT NULL
);
