"""The request path: ASGI app, body peek, header filtering, upstream forwarding, error bodies."""
