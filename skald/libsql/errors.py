"""Errors of the libSQL endpoint.

Two layers, as Hrana has them: a request the server cannot take at all (a bad body, an unknown
baton) is an HTTP error, rendered as problem+json like every skald error; a statement that fails
is a Hrana error inside a ``200`` pipeline response (``{"message", "code"}``), which the clients
raise as ``LibsqlError`` with that ``code`` (see :func:`skald.libsql.protocol.error_json`).
"""

from __future__ import annotations

from skald.errors import BadRequest, Conflict, NotFound, ServiceUnavailable


class HranaProtocolError(BadRequest):
    code = "hrana_protocol_error"
    title = "The request does not follow the Hrana protocol"


class UnknownBaton(NotFound):
    """404: the stream a baton named is not there (closed, expired, or not this caller's to see)."""

    code = "hrana_stream_not_found"
    title = "No open stream has this baton (closed, expired, or another token's or document's)"


class TooManyStreams(ServiceUnavailable):
    code = "hrana_too_many_streams"
    title = "Too many open libSQL streams"


class TransactionStatementRefused(BadRequest):
    code = "hrana_transaction_statement"
    title = "This transaction statement cannot run here"


class ReadOnlyTransaction(BadRequest):
    code = "hrana_read_only_transaction"
    title = "A read transaction (BEGIN TRANSACTION READONLY) cannot write"


class ResultTooLarge(BadRequest):
    code = "hrana_result_too_large"
    title = "The result has more rows or bytes than the server returns"


class SqlNotFound(BadRequest):
    code = "hrana_sql_not_found"
    title = "No stored SQL text has this sql_id"


class StreamBusy(Conflict):
    code = "hrana_stream_busy"
    title = "The stream is running another request"
