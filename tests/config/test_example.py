"""``config.yaml.example`` loads, shows every key of the model, and shows the real defaults."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel

from llmproxy.config._yaml_lines import read_yaml
from llmproxy.config.loader import load_config
from llmproxy.config.model import Config

EXAMPLE = Path(__file__).parents[2] / "config.yaml.example"

# Keys whose example value deliberately differs from the default, to show what an entry looks like.
SHOWN_WITH_EXAMPLES = {"backends", "routing.fallback", "auth.pipeline", "api_keys"}


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The model classes an annotation can hold (``X``, ``X | None``, ``tuple[X, ...]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if get_origin(annotation) in (tuple, Union, types.UnionType):
        return [m for arg in get_args(annotation) for m in _models_in(arg)]
    return []


def _all_keys(model: type[BaseModel], found: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """Every (class, YAML key) pair reachable from ``model``."""
    for name, field in model.model_fields.items():
        pair = (model.__name__, field.alias or name)
        if pair in found:
            continue
        found.add(pair)
        for child in _models_in(field.annotation):
            _all_keys(child, found)
    return found


def _written_keys(model: type[BaseModel], data: Any, found: set[tuple[str, str]]) -> None:
    """Every (class, YAML key) pair actually written in ``data``, walked along the model."""
    if not isinstance(data, dict):
        return
    for key, value in data.items():
        found.add((model.__name__, key))
        field = next((f for n, f in model.model_fields.items() if key in (n, f.alias)), None)
        if field is None:
            continue
        children = _models_in(field.annotation)
        if not children:
            continue
        items = value if isinstance(value, list) else [value]
        for item in items:
            _written_keys(children[0], item, found)


def test_example_loads() -> None:
    """The shipped example is a valid config that points at the mock backend."""
    config = load_config(EXAMPLE, environ={})
    assert {backend.url for backend in config.backends} == {"http://127.0.0.1:9001"}
    assert not config.auth.enabled  # the example keys are inert until an operator opts in


def test_example_writes_every_key_of_the_model() -> None:
    """Every field of every config class appears as a live (not commented-out) key."""
    data, _ = read_yaml(EXAMPLE.read_text(encoding="utf-8"), str(EXAMPLE), {})
    written: set[tuple[str, str]] = set()
    _written_keys(Config, data, written)
    missing = sorted(_all_keys(Config, set()) - written)
    assert not missing, f"config.yaml.example lacks these keys: {missing}"


def test_example_values_are_the_defaults() -> None:
    """Outside the example lists, every value in the example equals the model's default."""
    config = load_config(EXAMPLE, environ={})
    differences: list[str] = []

    def compare(model: BaseModel, default: BaseModel | None, path: str) -> None:
        # A section's default is the parent field's default instance when it has one (e.g.
        # auth.status_codes.disabled), else the section class's own field defaults.
        for name, field in type(model).model_fields.items():
            key = f"{path}.{field.alias or name}" if path else field.alias or name
            value = getattr(model, name)
            if key in SHOWN_WITH_EXAMPLES:
                continue
            expected = (
                getattr(default, name)
                if default is not None
                else field.get_default(call_default_factory=True)
            )
            if isinstance(value, BaseModel):
                compare(value, expected if isinstance(expected, BaseModel) else None, key)
            elif value != expected:
                differences.append(f"{key}: {value!r}")

    compare(config, None, "")
    assert not differences, f"config.yaml.example differs from the defaults: {differences}"
