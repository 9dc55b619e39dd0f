"""The recording sink: a line for each ended request that recording sampled on arrival."""

from __future__ import annotations

import asyncio

from llmproxy.finish import Finished, Sink
from llmproxy.record.capture import Captured
from llmproxy.record.format import Outcome
from llmproxy.record.recorder import Recorder


def recording_sink(recorder: Recorder) -> Sink:
    """The finish sink handing sampled requests to ``recorder`` (O(1), never blocks)."""

    def finished(done: Finished) -> asyncio.Future[None] | None:
        if done.arrival is None or done.body is None:
            return None  # not sampled
        recorder.submit(
            Captured(
                arrival=done.arrival,
                endpoint=done.endpoint,
                model=done.model,
                stream=done.stream,
                key_id=done.key_id,
                body=done.body,
                outcome=Outcome(
                    status=done.status,
                    prompt_tokens=done.prompt_tokens,
                    completion_tokens=done.completion_tokens,
                    ttft_ms=done.ttft * 1000 if done.ttft is not None else None,
                    duration_ms=done.duration * 1000,
                    cancelled=done.cancelled,
                ),
            )
        )
        return None

    return finished
