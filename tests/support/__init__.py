"""Shared test support: real servers on 127.0.0.1 port 0, in-process or as a subprocess."""
