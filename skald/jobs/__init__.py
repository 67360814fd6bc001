"""Durable job queues kept in a document (issue 21): see docs/jobs.md.

``service`` owns the queue operations (each one actor write op, group-committed),
``ops`` holds those ops as plain ``fn(conn, ...)`` functions, ``search`` turns a
filter into SQL, ``model`` validates requests and shapes answers, ``routes``
installs the HTTP API.
"""
