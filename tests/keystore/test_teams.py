"""Teams in the key store, on SQLite and on the real PostgreSQL: one behaviour, two databases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from llmproxy.budgets import Budget
from llmproxy.keystore import TeamConflict, TeamNotFound
from llmproxy.keystore.access import KeyStoreAccess, open_key_store
from tests.postgres import fresh_schema


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[KeyStoreAccess]:
    if request.param == "sqlite":
        opened = open_key_store(str(tmp_path / "keys.db"), tmp_path)
        await opened.open()
        yield opened
        await opened.close()
        return
    async with fresh_schema() as url:
        opened = open_key_store(url, tmp_path)
        await opened.open()
        yield opened
        await opened.close()


async def test_a_team_keeps_its_fields_and_names_are_unique_and_case_sensitive(
    store: KeyStoreAccess,
) -> None:
    """Added with every field, read back as a Team; the same name again is team_exists."""
    team = await store.add_team(
        name="research",
        description="R&D",
        budget=100,
        period="weekly",
        rpm=600,
        tpm=200_000,
        max_concurrent=20,
        total_quota=5_000_000,
    )
    assert (team.name, team.description, team.budget) == (
        "research",
        "R&D",
        Budget(100.0, "weekly"),
    )
    assert (team.rpm, team.tpm, team.max_concurrent, team.total_quota) == (
        600,
        200_000,
        20,
        5_000_000,
    )
    assert team.used_quota == 0
    assert team.created_at > 0
    assert await store.get_team("research") == team
    with pytest.raises(TeamConflict, match="a team named 'research' exists") as exists:
        await store.add_team(name="research")
    assert exists.value.code == "team_exists"
    other = await store.add_team(name="Research")  # case-sensitive: another team
    assert [t.name for t in await store.list_teams()] == ["Research", "research"]
    assert other.budget is None
    assert await store.get_team("RESEARCH") is None


async def test_bad_team_values_are_refused_naming_the_field(store: KeyStoreAccess) -> None:
    """A name with a space, a negative budget, an unknown period, a budgetless period."""
    with pytest.raises(ValueError, match="name: expected 1-64 letters"):
        await store.add_team(name="two words")
    with pytest.raises(ValueError, match="budget: must be an amount from 0 to 9,000,000"):
        await store.add_team(name="t", budget=-1)
    with pytest.raises(ValueError, match="period: expected one of daily, weekly, monthly, total"):
        await store.add_team(name="t", budget=1, period="yearly")
    with pytest.raises(ValueError, match="period: team 't' has no budget"):
        await store.add_team(name="t", period="daily")
    with pytest.raises(ValueError, match="rpm: must be at least 1"):
        await store.add_team(name="t", rpm=0)
    assert await store.list_teams() == []


async def test_updates_apply_clear_and_refuse_unknown_teams(store: KeyStoreAccess) -> None:
    """A change applies; None clears; clearing the budget resets its period; 404 for no team."""
    await store.add_team(name="ml", budget=10, period="daily", rpm=5)
    changed = await store.update_team("ml", rpm=None, tpm=100, description="models")
    assert (changed.rpm, changed.tpm, changed.description) == (None, 100, "models")
    assert changed.budget == Budget(10.0, "daily")
    cleared = await store.update_team("ml", budget=None)
    assert cleared.budget is None
    again = await store.update_team("ml", budget=3)
    assert again.budget == Budget(3.0, "monthly")
    with pytest.raises(TeamNotFound):
        await store.update_team("nope", rpm=1)
    with pytest.raises(ValueError, match="name: not a team field"):
        await store.update_team("ml", name="other")


async def test_keys_belong_to_existing_teams_only(store: KeyStoreAccess) -> None:
    """A key naming an unknown team is refused (on add and on update); its own budget is kept."""
    with pytest.raises(ValueError, match="team: no team named 'ghost'; add it first"):
        await store.add(name="k", team="ghost")
    assert await store.list() == []
    await store.add_team(name="ml")
    _, key = await store.add(name="k", team="ml", budget=2.5, budget_period="daily")
    assert (key.team, key.budget, key.budget_period) == ("ml", 2.5, "daily")
    assert key.as_data()["team"] == "ml"
    with pytest.raises(ValueError, match="team: no team named 'ghost'"):
        await store.update(key.id, team="ghost")
    moved = await store.update(key.id, team="")
    assert moved.team == ""
    assert [k.id for k in await store.list(team="ml")] == []


async def test_removing_a_team_with_keys_is_refused_unless_forced(store: KeyStoreAccess) -> None:
    """team_in_use names how many live keys; --force leaves them (and revoked ones) teamless."""
    await store.add_team(name="ml")
    _, one = await store.add(name="one", team="ml")
    _, two = await store.add(name="two", team="ml")
    await store.revoke(two.id)
    with pytest.raises(TeamConflict, match="team 'ml' still has 1 key") as in_use:
        await store.remove_team("ml")
    assert in_use.value.code == "team_in_use"
    removed, detached = await store.remove_team("ml", force=True)
    assert (removed.name, detached) == ("ml", 1)
    assert await store.get_team("ml") is None
    assert {(await store.get(k.id)).team for k in (one, two)} == {""}  # type: ignore[union-attr]
    with pytest.raises(TeamNotFound):
        await store.remove_team("ml")
    await store.add_team(name="empty")
    assert (await store.remove_team("empty"))[1] == 0


async def test_quota_used_by_keys_counts_for_their_team(store: KeyStoreAccess) -> None:
    """add_usage adds each key's tokens to its team's used_quota, in the same write."""
    await store.add_team(name="ml", total_quota=1000)
    _, one = await store.add(name="one", team="ml")
    _, two = await store.add(name="two", team="ml")
    _, alone = await store.add(name="alone")
    await store.add_usage({one.id: 10, two.id: 5, alone.id: 7})
    await store.add_usage({one.id: 1})
    team = await store.get_team("ml")
    assert team is not None
    assert team.used_quota == 16
    assert (await store.get(alone.id)).used_quota == 7  # type: ignore[union-attr]


async def test_changes_carry_the_teams_when_they_changed(store: KeyStoreAccess) -> None:
    """A full load holds every team; a later poll holds them again only after a team write."""
    await store.add_team(name="ml", rpm=5)
    full = await store.changes(None)
    assert full.complete
    assert [t.name for t in full.teams or []] == ["ml"]
    quiet = await store.changes(full.cursor)
    assert quiet.teams is None
    await store.update_team("ml", rpm=6)
    changed = await store.changes(quiet.cursor)
    assert [(t.name, t.rpm) for t in changed.teams or []] == [("ml", 6)]
