"""``docs/configuration.md`` is generated from the model and cannot drift from it."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from llmproxy.config import model
from llmproxy.config.reference import render_reference

DOCS = Path(__file__).parents[2] / "docs" / "configuration.md"


def test_checked_in_reference_matches_the_model() -> None:
    """The checked-in reference equals the generated one."""
    assert DOCS.read_text(encoding="utf-8") == render_reference(), (
        "docs/configuration.md is out of date; regenerate it with "
        "`python -m llmproxy.config.reference > docs/configuration.md`"
    )


def test_every_field_has_a_description() -> None:
    """Each config field carries a docstring, which becomes its description in the reference."""
    undocumented = [
        f"{cls.__name__}.{name}"
        for cls in vars(model).values()
        if isinstance(cls, type) and issubclass(cls, model.Section) and cls is not model.Section
        for name, field in cls.model_fields.items()
        if not field.description
    ]
    assert not undocumented, f"add a docstring under these fields in model.py: {undocumented}"


def test_reference_names_every_section_and_alias() -> None:
    """Sections appear by their YAML path, with aliases such as ``global``, not ``global_``."""
    text = render_reference()
    for heading in ("## `server.tls`", "## `backends[]`", "## `rate_limit.global`"):
        assert heading in text
    assert "global_" not in text
    assert issubclass(model.Config, BaseModel)


def test_reference_shows_units_and_bounds() -> None:
    """Durations and sizes show their unit forms, and constrained numbers their bounds."""
    text = render_reference()
    assert "| `read_timeout` | duration | `1m` |" in text
    assert "| `max_body_size` | size | `10MiB` |" in text
    assert "| `workers` | integer, ≥ 1, ≤ 256 | `1` |" in text
    assert "| `backends` | list, see `backends[]`, at least 1 entry | required |" in text
