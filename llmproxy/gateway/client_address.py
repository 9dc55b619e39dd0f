"""Who the client is: the connection's peer, or what a trusted proxy in front says it is.

``X-Forwarded-For`` and ``Forwarded`` are written by whoever sends the request, so they name the
client only when the gateway's peer is a proxy the operator trusts (``server.trusted_proxies``),
and only the one the proxy writes (``server.client_address_header``): a client's copy of the
other, passed through by the proxy, is not believed. Then the chain is read from the right
(each entry was appended by the hop in front of the next) and the client is the nearest address
that is not a trusted proxy itself. With no trusted proxies (the default) they are ignored: a
key's ``allowed_ips`` cannot be walked past with one header.

Upstream, ``X-Forwarded-For`` is the chain received from a trusted proxy followed by the peer,
once; from anyone else just the peer (a chain it made up is not passed on for a backend to
believe).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import msgspec

from llmproxy.http_fields import RawHeaders

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ClientAddress(msgspec.Struct, frozen=True):
    """The client's address as the gateway judges it, and the chain to send upstream."""

    ip: str | None
    forwarded_for: str | None
    """The upstream ``X-Forwarded-For`` value (None: no address is known)."""
    via_trusted_proxy: bool = False
    """The peer is a trusted proxy (its forwarding headers are passed on)."""


class ProxyTrust:
    """``server.trusted_proxies``, compiled once per runtime snapshot."""

    def __init__(self, entries: Iterable[str] = (), header: str = "X-Forwarded-For") -> None:
        self.networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(entry, strict=False) for entry in entries
        )
        self.header = header.lower().encode("latin-1")

    def trusts(self, address: str) -> bool:
        """Whether ``address`` is one of the trusted proxies."""
        parsed = _parse(address)
        return parsed is not None and any(parsed in network for network in self.networks)

    def resolve(self, peer: str | None, headers: RawHeaders) -> ClientAddress:
        """The client behind ``peer`` given the request's forwarding headers."""
        if not self.networks or peer is None or not self.trusts(peer):
            return ClientAddress(peer, peer)
        received = _chain(headers, self.header)
        client = peer
        for entry in reversed(received):
            if _parse(entry) is None:
                break  # a hop wrote nonsense: trust stops at the hop before it
            client = entry
            if not self.trusts(entry):
                break
        chain = ", ".join((*received, peer))
        return ClientAddress(client, chain, via_trusted_proxy=True)


def _chain(headers: RawHeaders, header: bytes) -> list[str]:
    """The addresses of every copy of ``header`` (``x-forwarded-for`` or ``forwarded``)."""
    found: list[str] = []
    for name, value in headers:
        if name != header:
            continue
        if header == b"x-forwarded-for":
            found.extend(_entries(value.decode("latin-1").split(",")))
            continue
        for element in value.decode("latin-1").split(","):
            for pair in element.split(";"):
                key, _, item = pair.strip().partition("=")
                if key.lower() == "for":
                    found.extend(_entries((item,)))
    return found


def _entries(items: Iterable[str]) -> list[str]:
    out = []
    for item in items:
        text = item.strip().strip('"')
        if text.startswith("["):  # [v6] or [v6]:port
            text = text[1 : text.find("]")] if "]" in text else text
        elif text.count(":") == 1:  # v4:port
            text = text.partition(":")[0]
        if text:
            out.append(text)
    return out


def _parse(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        return None
