"""``/teams``: the teams of the builtin key store as the admin API serves them (``llmproxy teams``).

A team is stored with the keys (``auth.builtin_db``), so it shares their store, their errors and
their way of reaching every worker: after each write :func:`~llmproxy.daemon.admin_keys.publish`
reloads this worker's keys and teams and bumps the daemon's key-store notice, so a team's new
limit applies from the next request on every worker, without a restart.

Removing a team that live keys still belong to is a 409 ``team_in_use`` naming how many, unless
``?force=1``, which leaves those keys without a team.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from aiohttp import web

from llmproxy.budgets import period_bounds, scope
from llmproxy.daemon.admin_http import AdminError, invalid, json_object, json_response, query_flag
from llmproxy.daemon.admin_keys import call, key_store, publish, store_fields
from llmproxy.daemon.runtime import RuntimeState
from llmproxy.keystore import KeyRecord
from llmproxy.pricing import NANOS
from llmproxy.teamfields import TEAM_ADD_FIELDS, TEAM_FIELD_MAP, TEAM_SETTABLE
from llmproxy.teams import Team
from llmproxy.usage.spendbook import period_spend


def team_json(team: Team) -> dict[str, object]:
    """A team as the API shows it: every field of :data:`~llmproxy.teamfields.TEAM_FIELDS` and
    its times."""
    return {**team.fields(), "created_at": team.created_at, "updated_at": team.updated_at}


def member_json(record: KeyRecord) -> dict[str, object]:
    """A key of a team as ``GET /teams/{name}`` lists it: who it is, never a secret or hash."""
    return {
        "id": record.id,
        "name": record.name,
        "prefix": record.prefix,
        "user_id": record.user_id,
        "status": record.status,
        "used_quota": record.used_quota,
    }


class TeamsApi:
    """The ``/teams`` handlers, on the store of the running config's ``builtin`` provider."""

    def __init__(self, state: RuntimeState) -> None:
        self._state = state

    def register(self, router: web.UrlDispatcher) -> None:
        """Add the ``/teams`` routes."""
        router.add_get("/teams", self.list_teams)
        router.add_post("/teams", self.add_team)
        router.add_get("/teams/{name}", self.show_team)
        router.add_patch("/teams/{name}", self.update_team)
        router.add_delete("/teams/{name}", self.remove_team)

    async def list_teams(self, _request: web.Request) -> web.Response:
        store = key_store(self._state)
        teams = await call(store.list_teams())
        members = Counter(record.team for record in await call(store.list()) if record.team)
        return json_response(
            {"teams": [{**team_json(team), "keys": members[team.name]} for team in teams]}
        )

    async def add_team(self, request: web.Request) -> web.Response:
        fields = store_fields(
            await json_object(request), frozenset(TEAM_ADD_FIELDS), TEAM_FIELD_MAP
        )
        name = fields.pop("name", None)
        if not isinstance(name, str) or not name.strip():
            raise invalid("name: required, as non-empty text")
        extra: dict[str, Any] = fields
        team = await call(key_store(self._state).add_team(name=name, **extra))
        await publish(self._state, f"team {team.name}")
        return json_response({"team": team_json(team)}, status=201)

    async def show_team(self, request: web.Request) -> web.Response:
        store = key_store(self._state)
        team = await self._team(request)
        keys = await call(store.list(team=team.name))
        return json_response(
            {
                "team": team_json(team),
                "keys": [member_json(k) for k in keys],
                "spent": await self._spent(team),
            }
        )

    async def _spent(self, team: Team) -> dict[str, object] | None:
        """What the team spent this period by the usage store (None: no budget, no store, or
        the store cannot answer now)."""
        sink = self._state.usage
        if team.budget is None or sink is None:
            return None
        start, end = period_bounds(team.budget.period, time.time())
        where = scope("team", team.name)
        try:
            nanos = await period_spend(sink.store, where, start)
        except Exception:  # the store starting or down: the team is shown without it
            return None
        return {
            "amount": nanos / NANOS,
            "currency": self._state.current.config.pricing_currency,
            "period_start": start,
            "period_end": end,
        }

    async def update_team(self, request: web.Request) -> web.Response:
        body = await json_object(request)
        changes = store_fields(body, frozenset(TEAM_SETTABLE), TEAM_FIELD_MAP)
        extra: dict[str, Any] = changes
        team = await call(key_store(self._state).update_team(request.match_info["name"], **extra))
        await publish(self._state, f"team {team.name}")
        return json_response({"team": team_json(team)})

    async def remove_team(self, request: web.Request) -> web.Response:
        force = query_flag(request, "force")
        store = key_store(self._state)
        team, detached = await call(store.remove_team(request.match_info["name"], force=force))
        # Its keys changed too (no team any more): every cached lookup is forgotten.
        await publish(self._state, f"team {team.name}")
        return json_response({"team": team_json(team), "keys_detached": detached})

    async def _team(self, request: web.Request) -> Team:
        name = request.match_info["name"]
        team = await call(key_store(self._state).get_team(name))
        if team is None:
            raise AdminError(404, f"no team named {name!r}", "team_not_found")
        return team
