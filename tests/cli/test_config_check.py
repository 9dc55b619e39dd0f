"""`llmproxy config check` validates a file and says exactly what is wrong, where."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from llmproxy.cli.main import app

EXAMPLE = Path(__file__).parents[2] / "config.yaml.example"


def test_check_accepts_the_example() -> None:
    """The shipped example passes and the summary names its backends."""
    result = CliRunner().invoke(app, ["config", "check", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert "OK" in result.output
    assert "127.0.0.1:9001" in result.output


def test_check_reports_every_problem_with_file_and_line(tmp_path: Path) -> None:
    """Typos, bad values and bad durations are each reported as file:line: path: message."""
    config = tmp_path / "bad.yaml"
    config.write_text(
        "backends:\n"
        "  - url: ftp://x\n"
        "routing:\n"
        "  load_balance_strategy: round_robbin\n"
        "health_check:\n"
        "  interval: 10x\n"
    )
    result = CliRunner().invoke(app, ["config", "check", str(config)])
    assert result.exit_code == 2
    lines = result.output.splitlines()
    assert any(line.startswith(f"{config}:2: backends[0].url: scheme must be") for line in lines)
    assert any(
        line.startswith(f"{config}:4: routing.load_balance_strategy: expected one of")
        and "round_robbin" in line
        for line in lines
    )
    interval = f"{config}:6: health_check.interval: expected a duration"
    assert any(line.startswith(interval) for line in lines)


def test_check_missing_file(tmp_path: Path) -> None:
    """A file that does not exist is a clear error, not a traceback."""
    result = CliRunner().invoke(app, ["config", "check", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "nope.yaml" in result.output
    assert "Traceback" not in result.output


def test_check_compiles_lua_scripts(tmp_path: Path) -> None:
    """A Lua syntax error is reported by config check with the script and line, not at startup."""
    config = tmp_path / "lua.yaml"
    config.write_text(
        "backends: [{url: 'http://127.0.0.1:9001'}]\n"
        "auth:\n"
        "  enabled: true\n"
        "  pipeline:\n"
        "    - name: inline\n"
        "      type: static\n"
        "      keys: [{key: sk-a}]\n"
        "      lua_script: |\n"
        "        local x = 1\n"
        "        return {allow = \n"
    )
    result = CliRunner().invoke(app, ["config", "check", str(config)])
    assert result.exit_code == 2
    assert "provider inline:" in result.output
    assert "Traceback" not in result.output


def test_check_suggests_a_spelling_for_a_bad_enum_value(tmp_path: Path) -> None:
    """A misspelt strategy gets a did-you-mean, as an unknown key does, and exit code 2."""
    config = tmp_path / "typo.yaml"
    config.write_text(
        "backends: [{url: 'http://127.0.0.1:9001'}]\n"
        "routing:\n"
        "  load_balance_strategy: least_conections\n"
    )
    result = CliRunner().invoke(app, ["config", "check", str(config)])
    assert result.exit_code == 2
    assert (
        f"{config}:3: routing.load_balance_strategy: expected one of round_robin, "
        "least_connections" in result.output
    )
    assert "got 'least_conections' (did you mean 'least_connections'?)" in result.output


def test_check_suggests_nothing_for_a_value_far_from_every_choice(tmp_path: Path) -> None:
    """A value like no choice gets the list of choices and no made-up suggestion."""
    config = tmp_path / "far.yaml"
    config.write_text(
        "backends: [{url: 'http://127.0.0.1:9001'}]\nrouting:\n  load_balance_strategy: zzz\n"
    )
    result = CliRunner().invoke(app, ["config", "check", str(config)])
    assert result.exit_code == 2
    assert "got 'zzz'" in result.output
    assert "did you mean" not in result.output
