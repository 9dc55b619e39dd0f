"""The recorder: sampling, the bounded queue, the writer thread, rotation and reconfiguration."""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from llmproxy.config.model import RecordConfig
from llmproxy.daemon.runtime import Runtime, RuntimeState
from llmproxy.metrics import GatewayMetrics
from llmproxy.record import capture
from llmproxy.record import recorder as recorder_module
from llmproxy.record.capture import Captured
from llmproxy.record.format import Outcome, RecordedRequest, decode_line
from llmproxy.record.recorder import Recorder
from tests.harness import make_config


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def record(path: str = "rec.jsonl", **settings: Any) -> RecordConfig:
    return RecordConfig(enabled=True, path=path, **settings)


def captured(n: int, arrival: float) -> Captured:
    body = f'{{"model":"m","messages":[{{"role":"user","content":"question {n}"}}]}}'
    return Captured(
        arrival=arrival,
        endpoint="/v1/chat/completions",
        model="m",
        stream=False,
        key_id=f"key{n}",
        body=body.encode(),
        outcome=Outcome(status=200, prompt_tokens=n, completion_tokens=1),
    )


def read(path: Path) -> list[RecordedRequest]:
    return [decode_line(line) for line in path.read_bytes().splitlines()]


def numbers(lines: list[RecordedRequest]) -> list[int]:
    return [line.outcome.prompt_tokens for line in lines if line.outcome is not None]


def lines_counted(metrics: GatewayMetrics, result: str) -> float | None:
    return metrics.registry.get_sample_value("llmproxy_record_lines_total", {"result": result})


def test_lines_carry_offsets_from_the_start_of_the_recording(tmp_path: Path) -> None:
    """Offsets count from when recording started; ``time`` is the matching Unix time."""
    clock = Clock(1000.0)
    recorder = Recorder(clock=clock)
    recorder.configure(record(), tmp_path)
    recorder.start()
    clock.now = 1002.5
    arrival = recorder.sample()
    assert arrival == 1002.5
    assert recorder.submit(captured(1, arrival))
    recorder.stop()
    (line,) = read(tmp_path / "rec.jsonl")
    assert line.offset == pytest.approx(2.5)
    assert line.time > 1.6e9
    assert line.key_id == "key1"
    assert line.body == {"model": "m", "messages": [{"role": "user", "content": "question 1"}]}
    assert (recorder.written, recorder.dropped, recorder.queued) == (1, 0, 0)


def test_sampling_follows_the_rate() -> None:
    """With a seeded generator, the share of sampled requests is the configured rate."""
    recorder = Recorder(rng=random.Random(7).random)
    recorder.configure(record(sample_rate=0.25), Path())
    sampled = sum(recorder.sample() is not None for _ in range(40_000))
    # 40 000 draws at 25 %: the standard deviation is ~87; 4 of them either side.
    assert 10_000 - 350 < sampled < 10_000 + 350
    recorder.configure(record(sample_rate=1.0), Path())
    assert all(recorder.sample() is not None for _ in range(1000))
    recorder.configure(RecordConfig(enabled=False, sample_rate=1.0), Path())
    assert recorder.sample_rate == 0.0


def test_a_full_queue_drops_and_counts_without_blocking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the writer stuck on its first line, submissions beyond queue_size are dropped."""
    taken, release = threading.Event(), threading.Event()
    build = capture.recorded_request

    def stuck(*args: Any, **kwargs: Any) -> RecordedRequest:
        taken.set()
        release.wait(10)
        return build(*args, **kwargs)

    monkeypatch.setattr(recorder_module, "recorded_request", stuck)
    metrics = GatewayMetrics(CollectorRegistry())
    recorder = Recorder(metrics, clock=Clock())
    recorder.configure(record(queue_size=3), tmp_path)
    recorder.start()
    assert recorder.submit(captured(0, 1000.0))
    assert taken.wait(10)
    accepted = [recorder.submit(captured(n, 1000.0)) for n in range(1, 11)]
    assert accepted == [True] * 3 + [False] * 7
    assert (recorder.queued, recorder.dropped) == (3, 7)
    assert lines_counted(metrics, "dropped") == 7
    release.set()
    recorder.stop()
    assert numbers(read(tmp_path / "rec.jsonl")) == [0, 1, 2, 3]
    assert (recorder.written, recorder.dropped) == (4, 7)
    assert lines_counted(metrics, "written") == 4


def test_rotation_keeps_offsets_going(tmp_path: Path) -> None:
    """Rotated files hold whole, consecutive lines; offsets go on across files."""
    recorder = Recorder(clock=Clock(1000.0))
    recorder.configure(record(max_bytes=2000, keep_files=10), tmp_path)
    recorder.start()
    for n in range(40):
        recorder.submit(captured(n, 1000.0 + n))
    recorder.stop()
    path = tmp_path / "rec.jsonl"
    rotated = sorted(tmp_path.glob("rec.jsonl.*"), key=lambda p: -int(p.suffix[1:]))
    assert len(rotated) >= 3
    lines = [line for file in [*rotated, path] for line in read(file)]
    assert numbers(lines) == list(range(40))
    assert [line.offset for line in lines] == [float(n) for n in range(40)]
    assert all(file.stat().st_size <= 2000 for file in [*rotated, path])


def test_reconfiguration_switches_files_without_losing_lines(tmp_path: Path) -> None:
    """A new path or body setting applies after the queued lines; off drops later lines."""
    metrics = GatewayMetrics(CollectorRegistry())
    clock = Clock(1000.0)
    recorder = Recorder(metrics, clock=clock)
    recorder.configure(record("a.jsonl"), tmp_path)
    recorder.start()
    for n in range(5):
        recorder.submit(captured(n, 1000.0 + n))
    recorder.configure(record("b.jsonl", sample_rate=0.5), tmp_path)  # no wait in between
    assert recorder.sample_rate == 0.5
    assert recorder.path == tmp_path / "b.jsonl"
    for n in range(5, 10):
        recorder.submit(captured(n, 1000.0 + n))
    recorder.configure(record("b.jsonl", bodies=False), tmp_path)
    for n in range(10, 15):
        recorder.submit(captured(n, 1000.0 + n))
    recorder.configure(RecordConfig(enabled=False), tmp_path)
    assert not recorder.submit(captured(15, 1015.0))
    recorder.stop()
    a, b = read(tmp_path / "a.jsonl"), read(tmp_path / "b.jsonl")
    assert numbers(a) == list(range(5))
    assert numbers(b) == list(range(5, 15))
    assert [line.offset for line in a + b] == [float(n) for n in range(15)]
    assert all(line.body is not None for line in b[:5])
    assert all(line.body is None and line.shape is not None for line in b[5:])
    assert (recorder.written, recorder.dropped) == (15, 1)
    assert (lines_counted(metrics, "written"), lines_counted(metrics, "dropped")) == (15, 1)


def test_turning_recording_on_again_starts_a_new_recording(tmp_path: Path) -> None:
    """A new file and offsets from 0; a request sampled by the previous recording is dropped."""
    clock = Clock(1000.0)
    recorder = Recorder(clock=clock)
    recorder.configure(record(), tmp_path)
    recorder.start()
    recorder.submit(captured(0, 1001.0))
    recorder.configure(RecordConfig(), tmp_path)
    clock.now = 2000.0
    recorder.configure(record(), tmp_path)
    recorder.submit(captured(1, 1500.0))  # arrived while the first recording ran
    recorder.submit(captured(2, 2003.0))
    recorder.stop()
    (first,) = read(tmp_path / "rec.jsonl.1")
    (second,) = read(tmp_path / "rec.jsonl")
    assert (numbers([first]), first.offset) == ([0], 1.0)
    assert (numbers([second]), second.offset) == ([2], 3.0)
    assert (recorder.written, recorder.dropped) == (2, 1)


def test_nothing_is_written_before_start_or_after_stop(tmp_path: Path) -> None:
    """Submissions outside start/stop are dropped, and no file or thread is created for them."""
    recorder = Recorder(clock=Clock())
    recorder.configure(record(), tmp_path)
    assert not recorder.submit(captured(0, 1000.0))
    recorder.start()
    recorder.stop()
    assert not recorder.submit(captured(1, 1000.0))
    assert recorder.dropped == 2
    assert not any(tmp_path.iterdir())


def test_an_unwritable_path_drops_lines_and_keeps_going(tmp_path: Path) -> None:
    """A file that cannot be opened drops (and counts) lines; a reload to a good path works."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    recorder = Recorder(clock=Clock())
    recorder.configure(record("not-a-dir/rec.jsonl"), tmp_path)
    recorder.start()
    recorder.submit(captured(0, 1000.0))
    recorder.configure(record("good.jsonl"), tmp_path)
    recorder.submit(captured(1, 1000.0))
    recorder.stop()
    assert numbers(read(tmp_path / "good.jsonl")) == [1]
    assert (recorder.written, recorder.dropped) == (1, 1)


def test_workers_write_files_of_their_own(tmp_path: Path) -> None:
    """With several workers, each process's recorder writes ``.w<N>`` before the extension."""
    recorder = Recorder(worker=2, clock=Clock())
    recorder.configure(record(), tmp_path)
    assert recorder.path == tmp_path / "rec.w2.jsonl"


async def test_each_adopted_snapshot_reconfigures_the_process_recorder(tmp_path: Path) -> None:
    """RuntimeState hands a recording snapshot its recorder, and a non-recording one none."""
    off = make_config([{"url": "http://127.0.0.1:9"}])
    on = make_config([{"url": "http://127.0.0.1:9"}], record={"enabled": True, "path": "r.jsonl"})
    state = RuntimeState(Runtime(off, base_dir=tmp_path))
    assert state.current.recorder is None
    assert not state.recorder.enabled
    await state.open()
    try:
        recording = Runtime(on, base_dir=tmp_path)
        await recording.open()
        state.swap(recording)
        assert recording.recorder is state.recorder
        assert state.recorder.path == tmp_path / "r.jsonl"
        silent = Runtime(off, base_dir=tmp_path)
        await silent.open()
        state.swap(silent)
        assert silent.recorder is None
        assert not state.recorder.enabled
        assert recording.recorder is state.recorder  # requests still on it drop their lines
    finally:
        await state.close()
    assert not (tmp_path / "r.jsonl").exists()  # the file is created by its first line
