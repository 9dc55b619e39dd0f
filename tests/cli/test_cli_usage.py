"""`llmproxy usage ...` against a fake admin API."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from llmproxy.cli.admin_client import AdminClient
from tests.cli.conftest import Invoke
from tests.cli.fake_admin import FakeAdmin
from tests.cli.test_rows import make_record


def sock(admin: FakeAdmin) -> list[str]:
    return ["--socket", str(admin.socket)]


RECORDS = [
    make_record(),
    make_record(key_name="batch", model="qwen", status=429, prompt_tokens=7, completion_tokens=0),
]


def stream_lines() -> list[str]:
    return [json.dumps(RECORDS[0]), "", json.dumps(RECORDS[1])]


def test_tail_prints_a_row_per_record_then_reports_the_end(cli: Invoke, admin: FakeAdmin) -> None:
    admin.route("GET", "/usage/stream", lines=stream_lines())
    result = cli("usage", "tail", "--key", "ci", "--model", "llama", *sock(admin))
    assert admin.seen[0].query == {"key": "ci", "model": "llama"}
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["TIME", "KEY", "MODEL"]
    assert lines[1].split()[1:] == ["ci", "llama", "gpu-1", "200", "1,200", "34", "95", "812"]
    assert lines[2].split()[1:5] == ["batch", "qwen", "gpu-1", "429"]
    assert len(lines) == 3
    # The daemon ends the stream only when it stops: the same outcome as no daemon.
    assert result.exit_code == 3
    assert "the daemon closed the usage stream" in result.stderr


def test_tail_json_is_one_record_per_line(cli: Invoke, admin: FakeAdmin) -> None:
    admin.route("GET", "/usage/stream", lines=stream_lines())
    result = cli("usage", "tail", "--json", *sock(admin))
    assert [json.loads(line) for line in result.stdout.splitlines()] == RECORDS
    assert admin.seen[0].query == {}


def test_tail_ctrl_c_exits_0(
    cli: Invoke, admin: FakeAdmin, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(
        self: AdminClient, path: str, params: Any = None, **kwargs: Any
    ) -> Iterator[Any]:
        yield RECORDS[0]
        raise KeyboardInterrupt

    monkeypatch.setattr(AdminClient, "stream", interrupted)
    result = cli("usage", "tail", "--json", *sock(admin))
    assert result.exit_code == 0
    assert len(result.stdout.splitlines()) == 1
    assert result.stderr == ""


def test_tail_refused(cli: Invoke, admin: FakeAdmin) -> None:
    admin.error("GET", "/usage/stream", 409, "no_usage_store", "this daemon keeps no usage records")
    result = cli("usage", "tail", *sock(admin))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "keeps no usage records" in result.stderr


def test_recent_newest_at_the_bottom(cli: Invoke, admin: FakeAdmin) -> None:
    now = time.time()
    newest_first = [make_record(key_name="new", time=now), make_record(key_name="old", time=now)]
    admin.route("GET", "/usage/recent", {"records": newest_first})
    result = cli("usage", "recent", "-n", "2", "--key", "k", "--model", "m", *sock(admin))
    assert result.exit_code == 0, result.output
    assert admin.seen[0].query == {"limit": "2", "key": "k", "model": "m"}
    lines = result.stdout.splitlines()
    assert [line.split()[1] for line in lines[1:]] == ["old", "new"]


def test_recent_default_limit_and_json(cli: Invoke, admin: FakeAdmin) -> None:
    admin.route("GET", "/usage/recent", {"records": RECORDS})
    result = cli("usage", "recent", "--json", *sock(admin))
    assert json.loads(result.stdout) == {"records": RECORDS}
    assert admin.seen[0].query == {"limit": "50"}


def test_summary_table_with_totals(cli: Invoke, admin: FakeAdmin) -> None:
    rows = [
        {"key_id": "key_a", "key_name": "ci", "model": "llama", "requests": 3,
         "prompt_tokens": 3000, "completion_tokens": 300, "total_tokens": 3300},
        {"key_id": "key_b", "key_name": "batch", "model": "llama", "requests": 1,
         "prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    ]  # fmt: skip
    admin.route("GET", "/usage/summary", {"since": 1_780_000_000.0, "rows": rows})
    result = cli("usage", "summary", "--since", "30m", *sock(admin))
    assert result.exit_code == 0, result.output
    assert admin.seen[0].query == {"since": "1800"}
    lines = [line.split() for line in result.stdout.splitlines()]
    assert lines[0][:5] == ["usage", "in", "the", "last", "30m"]
    assert lines[1] == ["KEY", "MODEL", "REQUESTS", "PROMPT", "COMPLETION", "TOTAL"]
    assert lines[2] == ["batch", "llama", "1", "10", "5", "15"]
    assert lines[3] == ["ci", "llama", "3", "3,000", "300", "3,300"]
    assert lines[4] == ["total", "4", "3,010", "305", "3,315"]


def test_summary_by_api(cli: Invoke, admin: FakeAdmin) -> None:
    """``--by api`` adds up what each API cost per model, whichever key spent it."""
    rows = [
        {"key_id": "key_a", "key_name": "ci", "model": "llama", "api": "chat", "requests": 3,
         "prompt_tokens": 30, "completion_tokens": 3, "total_tokens": 33},
        {"key_id": "key_b", "key_name": "cc", "model": "llama", "api": "messages", "requests": 2,
         "prompt_tokens": 20, "completion_tokens": 2, "total_tokens": 22},
        {"key_id": "key_a", "key_name": "ci", "model": "llama", "api": "messages", "requests": 1,
         "prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
    ]  # fmt: skip
    admin.route("GET", "/usage/summary", {"since": 1_780_000_000.0, "rows": rows})
    result = cli("usage", "summary", "--by", "api", *sock(admin))
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.stdout.splitlines()]
    assert lines[1] == ["API", "MODEL", "REQUESTS", "PROMPT", "COMPLETION", "TOTAL"]
    assert lines[2] == ["chat", "llama", "3", "30", "3", "33"]
    assert lines[3] == ["messages", "llama", "3", "30", "3", "33"]
    by_key = cli("usage", "summary", *sock(admin))
    key_lines = [line.split() for line in by_key.stdout.splitlines()]
    assert key_lines[2] == ["cc", "llama", "2", "20", "2", "22"]
    assert key_lines[3] == ["ci", "llama", "4", "40", "4", "44"]  # its two APIs added up


def test_summary_default_window_is_an_hour(cli: Invoke, admin: FakeAdmin) -> None:
    admin.route("GET", "/usage/summary", {"since": 1_780_000_000.0, "rows": []})
    result = cli("usage", "summary", *sock(admin))
    assert result.exit_code == 0
    assert admin.seen[0].query == {"since": "3600"}
    assert "no usage in that period" in result.stdout


def test_dead_letters_are_listed_and_requeued(cli: Invoke, admin: FakeAdmin) -> None:
    letter = {
        "id": "rec-1",
        "attempts": 50,
        "error": "HTTP 503",
        "moved_at": time.time(),
        "record": {"request_id": "req-9"},
    }
    admin.route("GET", "/usage/dead-letters", {"count": 1, "records": [letter]})
    admin.route("POST", "/usage/dead-letters/requeue", {"requeued": 1})
    listed = cli("usage", "dead-letters", *sock(admin))
    assert listed.exit_code == 0, listed.output
    assert listed.stdout.splitlines()[1].split() == ["rec-1", "50", "HTTP", "503", "req-9"]
    assert "1 dead letters" in listed.stdout
    requeued = cli("usage", "dead-letters", "--requeue", *sock(admin))
    assert requeued.exit_code == 0, requeued.output
    assert "1 records back in the webhook outbox" in requeued.stdout
    assert [(seen.method, seen.path) for seen in admin.seen] == [
        ("GET", "/usage/dead-letters"),
        ("POST", "/usage/dead-letters/requeue"),
    ]


def test_summary_by_team_shows_cost_in_the_daemons_currency(cli: Invoke, admin: FakeAdmin) -> None:
    """``--by team`` regroups the daemon's rows per team and model, with a COST column in the
    currency the daemon names."""
    rows = [
        {"key_id": "key_a", "key_name": "ci", "team": "ml", "model": "llama", "requests": 3,
         "prompt_tokens": 30, "completion_tokens": 3, "total_tokens": 33, "cost": 1.5},
        {"key_id": "key_b", "key_name": "cc", "team": "ml", "model": "llama", "requests": 1,
         "prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11, "cost": 0.25},
    ]  # fmt: skip
    answer = {"since": 1_780_000_000.0, "currency": "EUR", "rows": rows}
    admin.route("GET", "/usage/summary", answer)
    result = cli("usage", "summary", "--by", "team", *sock(admin))
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.stdout.splitlines()]
    assert lines[1] == [
        "TEAM",
        "MODEL",
        "REQUESTS",
        "PROMPT",
        "COMPLETION",
        "TOTAL",
        "COST",
        "(EUR)",
    ]
    assert lines[2] == ["ml", "llama", "4", "40", "4", "44", "1.75"]
    bad = cli("usage", "summary", "--by", "colour", *sock(admin))
    assert bad.exit_code == 2
