"""Leases with fencing tokens, kept in each document."""
