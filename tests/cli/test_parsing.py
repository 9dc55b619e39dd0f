"""What operators type: durations, expiry times, lists and metadata items."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from llmproxy.cli.parsing import parse_expiry, parse_list, parse_metadata, parse_since

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1h", 3600.0), ("30m", 1800.0), ("7d", 604800.0), ("1h30m", 5400.0), ("90", 90.0)],
)
def test_since_reads_durations(text: str, seconds: float) -> None:
    assert parse_since(text) == seconds


@pytest.mark.parametrize("text", ["0", "0s", "soon", "-1h", ""])
def test_since_refuses_nothing_and_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_since(text)


def test_expiry_duration_counts_from_now() -> None:
    assert parse_expiry("30d", NOW) == NOW + 30 * 86400
    assert parse_expiry("12h", NOW) == NOW + 12 * 3600


def test_expiry_date_is_midnight_utc() -> None:
    assert parse_expiry("2027-01-01", NOW) == datetime(2027, 1, 1, tzinfo=UTC).timestamp()


def test_expiry_time_with_zone() -> None:
    expected = datetime(2027, 1, 1, 10, 0, tzinfo=UTC).timestamp()
    assert parse_expiry("2027-01-01T12:00+02:00", NOW) == expected
    assert parse_expiry("2027-01-01T10:00Z", NOW) == expected


def test_expiry_unix_seconds() -> None:
    assert parse_expiry("1798761600", NOW) == 1798761600.0


@pytest.mark.parametrize("text", ["never", "NONE", " never "])
def test_expiry_never(text: str) -> None:
    assert parse_expiry(text, NOW) is None


def test_expiry_bare_small_number_asks_for_a_unit() -> None:
    """`--expires 30` is almost surely 30 days without its unit, not 1970."""
    with pytest.raises(ValueError, match="like 30d"):
        parse_expiry("30", NOW)


@pytest.mark.parametrize("text", ["2020-01-01", "1600000000"])
def test_expiry_in_the_past_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="in the past"):
        parse_expiry(text, NOW)


def test_expiry_nonsense_lists_the_accepted_forms() -> None:
    with pytest.raises(ValueError, match=r"30d.*2027-01-01.*never"):
        parse_expiry("next tuesday", NOW)


def test_list_drops_blanks_and_spaces() -> None:
    assert parse_list("a, b,,c ,") == ["a", "b", "c"]
    assert parse_list("") == []


def test_metadata_text_and_json_values() -> None:
    items = ["team=ml", "code=007", "budget:=100", "flags:=[1, true]", "empty=", "eq=a=b"]
    assert parse_metadata(items) == {
        "team": "ml",
        "code": "007",
        "budget": 100,
        "flags": [1, True],
        "empty": "",
        "eq": "a=b",
    }


def test_metadata_later_item_wins() -> None:
    assert parse_metadata(["a=1", "a=2"]) == {"a": "2"}


@pytest.mark.parametrize("item", ["novalue", "=x", ":=1"])
def test_metadata_needs_a_name_and_equals(item: str) -> None:
    with pytest.raises(ValueError, match="name=value"):
        parse_metadata([item])


def test_metadata_json_must_parse() -> None:
    with pytest.raises(ValueError, match="must be JSON"):
        parse_metadata(["n:=not json"])
