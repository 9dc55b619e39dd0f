"""Who the client is: the peer, unless a trusted proxy names it."""

from __future__ import annotations

from llmproxy.gateway.client_address import ProxyTrust


def test_without_trusted_proxies_forwarded_headers_are_ignored() -> None:
    """No trusted proxies: the peer is the client and the only upstream entry."""
    trust = ProxyTrust()
    found = trust.resolve("127.0.0.1", [(b"x-forwarded-for", b"10.0.0.1")])
    assert (found.ip, found.forwarded_for, found.via_trusted_proxy) == (
        "127.0.0.1",
        "127.0.0.1",
        False,
    )


def test_chain_is_read_from_the_right_through_trusted_hops() -> None:
    """The client is the nearest untrusted address; a forged left-most entry is not it."""
    trust = ProxyTrust(["10.0.0.0/8"])
    headers = [(b"x-forwarded-for", b"6.6.6.6, 203.0.113.5"), (b"x-forwarded-for", b"10.1.1.1")]
    found = trust.resolve("10.2.2.2", headers)
    assert found.ip == "203.0.113.5"
    assert found.forwarded_for == "6.6.6.6, 203.0.113.5, 10.1.1.1, 10.2.2.2"
    assert found.via_trusted_proxy


def test_forwarded_header_and_ports() -> None:
    """RFC 7239 `for=` with quotes, brackets and ports is understood when the proxy writes
    Forwarded; a client's X-Forwarded-For passed through beside it is not believed."""
    trust = ProxyTrust(["127.0.0.1"], "Forwarded")
    headers = [
        (b"x-forwarded-for", b"10.9.9.9"),
        (b"forwarded", b'for="[2001:db8::1]:4711";proto=https, for=198.51.100.1:80'),
    ]
    assert trust.resolve("127.0.0.1", headers).ip == "198.51.100.1"
    assert ProxyTrust(["127.0.0.1"]).resolve("127.0.0.1", headers).ip == "10.9.9.9"


def test_garbage_in_the_chain_stops_trust() -> None:
    """An entry that is no address ends the walk at the hop that wrote it."""
    trust = ProxyTrust(["127.0.0.1"])
    assert trust.resolve("127.0.0.1", [(b"x-forwarded-for", b"nonsense")]).ip == "127.0.0.1"
    found = trust.resolve("127.0.0.1", [(b"x-forwarded-for", b"1.2.3.4, nonsense, 127.0.0.1")])
    assert found.ip == "127.0.0.1"
