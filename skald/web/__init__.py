"""The web face: home page, API docs, sign-in by token, the document browser (see docs/web.md)."""
