"""The canonical path: refused unless every party resolves it the same way; segment matching."""

from __future__ import annotations

import pytest

from llmproxy.gateway.request_path import PathRefused, canonical_path, under


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        (b"/v1/chat/completions", "/v1/chat/completions"),
        (b"/v1/files/caf%C3%A9", "/v1/files/café"),
        (b"/v1/files/a%20b", "/v1/files/a b"),
        (b"/v1/models/org%2Bname:v1@x", "/v1/models/org+name:v1@x"),
        (b"/", "/"),
    ],
)
def test_canonical_paths_decode_to_one_string(raw: bytes, path: str) -> None:
    """A canonical path decodes to exactly one string and its raw bytes are kept to forward."""
    checked = canonical_path(raw)
    assert (checked.path, checked.raw) == (path, raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"v1/chat",
        b"/v1/../x",
        b"/v1/./x",
        b"/v1//x",
        b"/v1/x/",
        b"/v1/%2e%2e/x",
        b"/v1/%2E/x",
        b"/v1/a%2Fb",
        b"/v1/a%2fb",
        b"/v1/a%5Cb",
        b"/v1/a\\b",
        b"/v1/a%25b",
        b"/v1/a%00b",
        b"/v1/a%0d%0ab",
        b"/v1/a%61",
        b"/v1/a%7E",
        b"/v1/a%zz",
        b"/v1/a%4",
        b"/v1/a;b",
        b"/v1/a b",
        b"/v1/a\x7fb",
        b"/v1/caf\xc3\xa9",
        b"/v1/%c0%ae%c0%ae",
        b"/v1/%ff",
        b"/" + b"a" * 3000,
    ],
)
def test_paths_a_normaliser_would_change_are_refused(raw: bytes) -> None:
    """Dot and empty segments, separators and unreserved characters in escapes, bad escapes,
    matrix parameters, raw controls and non-ASCII are refused, never rewritten."""
    with pytest.raises(PathRefused):
        canonical_path(raw)


def test_segment_matching() -> None:
    """A prefix covers itself and what is below it, never a longer name."""
    prefixes = ("/v1/models", "/health")
    assert under("/v1/models", prefixes)
    assert under("/v1/models/x", prefixes)
    assert not under("/v1/modelsX", prefixes)
    assert not under("/v1/model", prefixes)
    assert not under("/healthz", prefixes)
    assert under("/anything", ("/",))
