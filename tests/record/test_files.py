"""The recording file: appends, rotates by size, keeps ``keep_files`` generations."""

from __future__ import annotations

from pathlib import Path

from llmproxy.record.files import RotatingFile, rotated_name, worker_path


def _line(n: int) -> bytes:
    return f'{{"n":{n:04d}}}\n'.encode()  # 11 bytes


def test_names() -> None:
    """Rotated files get ``.N`` after the whole name; workers ``.wN`` before the extension."""
    path = Path("/data/rec.jsonl")
    assert rotated_name(path, 2) == Path("/data/rec.jsonl.2")
    assert worker_path(path, None) == path
    assert worker_path(path, 3) == Path("/data/rec.w3.jsonl")


def test_rotation_keeps_whole_lines_and_newest_generations(tmp_path: Path) -> None:
    """No file exceeds max_bytes, no line is split, the oldest generation beyond keep is gone."""
    path = tmp_path / "sub" / "rec.jsonl"
    file = RotatingFile(path, max_bytes=35, keep_files=2)  # three lines per file
    for n in range(12):
        file.write(_line(n))
    file.close()
    names = sorted(p.name for p in path.parent.iterdir())
    assert names == ["rec.jsonl", "rec.jsonl.1", "rec.jsonl.2"]
    assert path.read_bytes() == b"".join(_line(n) for n in (9, 10, 11))
    assert rotated_name(path, 1).read_bytes() == b"".join(_line(n) for n in (6, 7, 8))
    assert rotated_name(path, 2).read_bytes() == b"".join(_line(n) for n in (3, 4, 5))


def test_appends_to_an_existing_file_and_counts_its_size(tmp_path: Path) -> None:
    """A restarted recording appends; what is already there counts towards rotation."""
    path = tmp_path / "rec.jsonl"
    path.write_bytes(_line(0) + _line(1))
    file = RotatingFile(path, max_bytes=35, keep_files=1)
    file.write(_line(2))
    file.write(_line(3))
    file.close()
    assert rotated_name(path, 1).read_bytes() == _line(0) + _line(1) + _line(2)
    assert path.read_bytes() == _line(3)


def test_a_fresh_recording_rotates_an_existing_file_away(tmp_path: Path) -> None:
    """``fresh``: what an earlier recording left is kept as ``.1``, the new one starts empty."""
    path = tmp_path / "rec.jsonl"
    path.write_bytes(_line(0))
    file = RotatingFile(path, max_bytes=1000, keep_files=2, fresh=True)
    file.write(_line(1))
    file.close()
    assert rotated_name(path, 1).read_bytes() == _line(0)
    assert path.read_bytes() == _line(1)
    RotatingFile(tmp_path / "new.jsonl", max_bytes=1000, keep_files=2, fresh=True).close()
    assert not rotated_name(tmp_path / "new.jsonl", 1).exists()


def test_keep_zero_deletes_the_full_file(tmp_path: Path) -> None:
    """keep_files: 0 keeps only the current file."""
    path = tmp_path / "rec.jsonl"
    file = RotatingFile(path, max_bytes=25, keep_files=0)
    for n in range(5):
        file.write(_line(n))
    file.close()
    assert [p.name for p in tmp_path.iterdir()] == ["rec.jsonl"]
    assert path.read_bytes() == _line(4)


def test_a_line_longer_than_the_limit_is_written_alone(tmp_path: Path) -> None:
    """An oversized line is not dropped: it gets a file of its own."""
    path = tmp_path / "rec.jsonl"
    file = RotatingFile(path, max_bytes=15, keep_files=3)
    big = b'{"big":"' + b"y" * 40 + b'"}\n'
    file.write(_line(0))
    file.write(big)
    file.write(_line(1))
    file.close()
    assert rotated_name(path, 2).read_bytes() == _line(0)
    assert rotated_name(path, 1).read_bytes() == big
    assert path.read_bytes() == _line(1)
