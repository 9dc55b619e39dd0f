"""The rows a usage store hands back, whichever database holds them (SQLite or PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from llmproxy.apis import ENDPOINT_API
from llmproxy.usage.record import UsageRecord


@dataclass(frozen=True, slots=True)
class PendingRecord:
    """One outbox row waiting for delivery: ``body`` is the record's stored JSON."""

    seq: int
    id: str
    body: bytes
    queued_at: float
    attempts: int


@dataclass(frozen=True, slots=True)
class UsageSummaryRow:
    """What one key spent on one model through one API: requests, tokens and cost (``GET
    /usage/summary``), with the key's user and team, so a client can group by any of them."""

    key_id: str
    key_name: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    api: str = ""
    """``chat``, ``messages``... (:mod:`llmproxy.apis`); "" for other paths."""
    user_id: str = ""
    team: str = ""
    cost: float = 0.0
    """In the gateway's ``pricing_currency``."""

    def as_json(self) -> dict[str, object]:
        """The row as the admin API returns it."""
        return {
            "key_id": self.key_id,
            "key_name": self.key_name,
            "user_id": self.user_id,
            "team": self.team,
            "model": self.model,
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "cost": round(self.cost, 9),
            "api": self.api,
        }


SummaryByEndpoint = tuple[str, str, str, str, int, int, int, int, str, str, float]
"""key id, key name, model, endpoint, requests, prompt, completion and total tokens, user id,
team, cost."""


def summary_by_api(rows: Iterable[SummaryByEndpoint]) -> list[UsageSummaryRow]:
    """Rows a store summed per key, model, endpoint, user and team, summed per key, model, API,
    user and team (the endpoint says the API, in records of every version), the biggest spender
    first."""
    merged: dict[tuple[str, str, str, str, str], list[int]] = {}
    costs: dict[tuple[str, str, str, str, str], float] = {}
    names: dict[tuple[str, str, str, str, str], str] = {}
    for key_id, key_name, model, endpoint, *counts, user_id, team, cost in rows:  # newest first
        group = (key_id, model, ENDPOINT_API.get(endpoint, ""), user_id, team)
        names.setdefault(group, key_name)
        sums = merged.setdefault(group, [0, 0, 0, 0])
        for index, count in enumerate(counts):
            sums[index] += int(count)
        costs[group] = costs.get(group, 0.0) + float(cost or 0)
    out = [
        UsageSummaryRow(
            group[0],
            names[group],
            group[1],
            sums[0],
            sums[1],
            sums[2],
            sums[3],
            group[2],
            group[3],
            group[4],
            costs[group],
        )
        for group, sums in merged.items()
    ]
    out.sort(key=lambda row: (-row.cost, -row.total_tokens, row.key_id, row.model, row.api))
    return out


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record the receiver never accepted, and the last error."""

    id: str
    body: bytes
    attempts: int
    error: str
    moved_at: float


class JournalOpen(NamedTuple):
    """A journal row as opened: the record the request would get if it were cut now."""

    request_id: str
    """The row's key: the request's usage record id (unique; a client's request id is not)."""
    owner: str
    body: bytes
    opened_at: float
    lease: str


class JournalCheckpoint(NamedTuple):
    """The tokens a journalled request has counted so far."""

    prompt_tokens: int
    completion_tokens: int
    at: float
    request_id: str
    """The row's key (:attr:`JournalOpen.request_id`)."""


class JournalRow(NamedTuple):
    """A journal row as read back when its owner is gone."""

    request_id: str
    owner: str
    body: bytes
    prompt_tokens: int
    completion_tokens: int
    opened_at: float
    updated_at: float
    lease: str


class Recovered(NamedTuple):
    """A request a crash cut off, billed when its row was settled."""

    record: UsageRecord
    lease: str
    """The limits lease it held ("" for none): a Redis one is settled with the billed tokens."""


Settle = Callable[[JournalRow], UsageRecord]
"""Turns the journal row of a request a crash cut off into its ``interrupted`` record."""


class RecordRefused(Exception):
    """The usage database refused the data of a write itself (a value it cannot hold), not the
    connection: the same batch would fail again. The writer splits the batch to find the
    record."""
