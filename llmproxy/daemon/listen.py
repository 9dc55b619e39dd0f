"""Parse listen addresses as operators write them: `:8000`, `0.0.0.0:8000`, `[::1]:80`."""

from __future__ import annotations


def parse_listen(address: str) -> tuple[str, int]:
    """Split ``address`` into host and port; an empty host means every IPv4 interface.

    >>> parse_listen(":8000")
    ('0.0.0.0', 8000)
    """
    text = address.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"listen address {address!r}: expected [host]:port")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"listen address {address!r}: expected host:port or :port")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"listen address {address!r}: port must be a number from 0 to 65535")
    return host or "0.0.0.0", int(port_text)
