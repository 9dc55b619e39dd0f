"""``llmproxy replay``: send recorded (or synthetic) requests to an OpenAI-compatible endpoint
and report what its users felt: time to first token, inter-token latency, total latency, errors.

The pure parts — reading a recording (:mod:`.source`), rebuilding requests (:mod:`.outgoing`),
made-up text (:mod:`.text`), synthetic lengths (:mod:`.synthetic`), send times
(:mod:`.schedule`), stream scanning (:mod:`.sse`), statistics (:mod:`.stats`), the report
(:mod:`.report`) and run comparison (:mod:`.compare`) — have no I/O and are unit-tested without
sockets. :mod:`.client` (aiohttp), :mod:`.runner` (the event loop: open and closed loop, the
loop-lag ticker), :mod:`.progress` (the live bar) do the I/O.
"""
