"""Reading a recording: numbered lines, malformed ones reported by number, arrival order."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from llmproxy.record.format import RecordedRequest
from llmproxy.replay import source
from tests.replay.recordings import chat_body, with_body, with_shape, write


def _arrivals(scan: source.Scan) -> list[tuple[int, float]]:
    return [(entry.line, entry.arrival) for entry in source.read(scan)]


def test_reads_every_line_with_its_number(tmp_path: Path) -> None:
    path = write(tmp_path / "r.jsonl", [with_body(0.0, chat_body()), with_shape(0.5)])
    scan = source.scan([path])
    assert (scan.requests, scan.malformed, scan.problems) == (2, 0, [])
    entries = list(source.read(scan))
    assert [(e.path, e.line, e.arrival) for e in entries] == [(path, 1, 0.0), (path, 2, 0.5)]
    assert entries[0].request.body == chat_body()


def test_a_malformed_line_is_reported_with_its_number_and_skipped(tmp_path: Path) -> None:
    path = write(
        tmp_path / "r.jsonl",
        [
            with_body(0.0, chat_body()),
            "{not json",
            with_body(1.0, chat_body()),
            '{"v": 1, "offset": 2.0, "endpoint": "/v1/chat/completions"}',  # no body nor shape
            '{"v": 9, "offset": 3.0, "endpoint": "/v1/x", "body": {}}',
            with_body(4.0, chat_body()),
        ],
    )
    scan = source.scan([path])
    assert scan.requests == 3
    assert scan.malformed == 3
    assert [problem.line for problem in scan.problems] == [2, 4, 5]
    assert "body" in scan.problems[1].message
    assert "version 9" in scan.problems[2].message
    assert str(scan.problems[0]).startswith(f"{path}: line 2: ")
    assert [line for line, _ in _arrivals(scan)] == [1, 3, 6]


def test_strict_refuses_the_file_naming_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "r.jsonl", [with_body(0.0, chat_body()), "[]", "{"])
    with pytest.raises(source.SourceError, match=r"r\.jsonl: line 2: "):
        source.scan([path], strict=True)


def test_blank_lines_are_not_problems(tmp_path: Path) -> None:
    path = write(tmp_path / "r.jsonl", [with_body(0.0, chat_body()), "", "  ", with_shape(1.0)])
    scan = source.scan([path], strict=True)
    assert scan.requests == 2
    assert [line for line, _ in _arrivals(scan)] == [1, 4]


def test_a_shape_whose_body_cannot_be_made_up_is_a_problem(tmp_path: Path) -> None:
    path = write(tmp_path / "r.jsonl", [with_shape(0.0, "/v1/audio/speech"), with_shape(1.0)])
    scan = source.scan([path])
    assert scan.requests == 1
    assert scan.problems[0].line == 1
    assert "/v1/audio/speech" in scan.problems[0].message


def test_requests_come_in_arrival_order_not_in_the_order_written(tmp_path: Path) -> None:
    """The recorder writes a line when its request ends: a long stream's line comes late."""
    path = write(
        tmp_path / "r.jsonl",
        [with_shape(10.0), with_shape(12.5), with_shape(11.0), with_shape(13.0), with_shape(11.0)],
    )
    scan = source.scan([path])
    assert _arrivals(scan) == [(1, 10.0), (3, 11.0), (5, 11.0), (2, 12.5), (4, 13.0)]
    assert scan.span == pytest.approx(3.0)
    assert scan.reordered == 2
    assert not scan.by_time


def _timed(offset: float, time: float, model: str) -> RecordedRequest:
    return msgspec.structs.replace(with_shape(offset, model=model), time=time)


def test_several_files_are_merged_by_arrival_time(tmp_path: Path) -> None:
    """One file per worker: each with its own offsets, so the Unix time orders them."""
    w0 = write(tmp_path / "r.w0.jsonl", [_timed(0.0, 1000.0, "a"), _timed(2.0, 1002.0, "a")])
    w1 = write(tmp_path / "r.w1.jsonl", [_timed(5.0, 1001.0, "b"), _timed(5.5, 1001.5, "b")])
    scan = source.scan([w0, w1])
    assert scan.by_time
    entries = list(source.read(scan))
    assert [(e.path.name, e.request.model, e.arrival) for e in entries] == [
        ("r.w0.jsonl", "a", 1000.0),
        ("r.w1.jsonl", "b", 1001.0),
        ("r.w1.jsonl", "b", 1001.5),
        ("r.w0.jsonl", "a", 1002.0),
    ]
    assert scan.span == pytest.approx(2.0)


def test_several_files_without_times_are_merged_by_offset(tmp_path: Path) -> None:
    """Rotated files of one recording share its offset clock."""
    old = write(tmp_path / "r.jsonl.1", [with_shape(1.0), with_shape(3.0)])
    new = write(tmp_path / "r.jsonl", [with_shape(2.0), with_shape(4.0)])
    scan = source.scan([new, old])
    assert not scan.by_time
    assert [a for _, a in _arrivals(scan)] == [1.0, 2.0, 3.0, 4.0]


def test_only_the_first_problems_are_kept(tmp_path: Path) -> None:
    path = write(tmp_path / "r.jsonl", ["nope"] * (source.MAX_PROBLEMS_KEPT + 5))
    scan = source.scan([path])
    assert scan.malformed == source.MAX_PROBLEMS_KEPT + 5
    assert len(scan.problems) == source.MAX_PROBLEMS_KEPT
    assert scan.requests == 0
    assert scan.span == 0.0


def test_reading_can_stop_early(tmp_path: Path) -> None:
    path = write(tmp_path / "r.jsonl", [with_shape(float(i)) for i in range(10)])
    entries = source.read(source.scan([path]))
    assert next(entries).line == 1
    entries.close()  # closes the file (filterwarnings=error would flag a leak)


def test_a_missing_file_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(source.SourceError, match="No such file"):
        source.scan([tmp_path / "missing.jsonl"])
