"""The document runtime: actors, their SQLite worker threads and connections, migrations,
the supervisor and the SQL sandbox (statement classes, allowed functions, linear-time patterns)."""
