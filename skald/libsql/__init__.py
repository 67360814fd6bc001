"""libSQL's remote protocol (Hrana 2 and 3, over HTTP and WebSocket) for one skald document.

``service`` runs streams on the document's actor, ``routes`` serves them, ``protocol`` decodes
and encodes the wire format, ``sqltext`` reads SQL text (transaction statements, parameters,
statement boundaries). See docs/libsql.md.
"""
