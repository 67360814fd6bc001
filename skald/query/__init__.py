"""The query API: SQL statements and batches on a document, bounded and scoped; JSON values; reactive watches."""
