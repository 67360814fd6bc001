"""The client's IP address, believing forwarded-for headers only from trusted proxies."""

from __future__ import annotations

import ipaddress
from functools import lru_cache

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=16)
def parse_trusted(spec: str) -> tuple[Network, ...]:
    """``"127.0.0.1, 10.0.0.0/8"`` -> networks. Empty means trust no proxy."""
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in spec.split(",") if part.strip())


def _trusted(addr: str, trusted: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def client_ip(remote_addr: str | None, forwarded_for: str | None, real_ip: str | None, trusted_spec: str) -> str:
    """Walk ``X-Forwarded-For`` from the right while hops are trusted proxies.

    The peer address is the truth unless it is a trusted proxy; then the
    right-most untrusted address in ``X-Forwarded-For`` (or ``X-Real-IP``) is.
    """
    peer = remote_addr or ""
    trusted = parse_trusted(trusted_spec)
    if not trusted or not _trusted(peer, trusted):
        return peer
    if forwarded_for:
        hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
        for hop in reversed(hops):
            if not _trusted(hop, trusted):
                return hop
        if hops:
            return hops[0]
    if real_ip:
        return real_ip.strip()
    return peer
