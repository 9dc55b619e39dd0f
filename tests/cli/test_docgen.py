"""Generated completions and man pages: fresh, deterministic, complete, and they work.

The command tree is walked here independently of ``docgen.walk`` so a bug that drops a
command from the walk cannot also drop it from the expectations.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Annotated

import pytest
import typer.main
from typer._click import Command, Context
from typer.core import TyperGroup
from typer.testing import CliRunner

from llmproxy import __version__
from llmproxy.cli import docgen
from llmproxy.cli.main import app
from llmproxy.cli.output import EXIT_CODES_EPILOG, ExitCode

ROOT = Path(__file__).parents[2]
ENTRY_POINT = Path(sys.executable).parent / docgen.PROG

Tree = dict[tuple[str, ...], tuple[Command, Context]]


def _tree() -> Tree:
    """Every visible command path of the real app, with the context it renders in."""
    found: Tree = {}

    def visit(command: Command, path: tuple[str, ...], parent: Context | None) -> None:
        ctx = Context(command, info_name=path[-1], parent=parent)
        found[path] = (command, ctx)
        if isinstance(command, TyperGroup):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                if sub is not None and not sub.hidden:
                    visit(sub, (*path, name), ctx)

    visit(typer.main.get_command(app), (docgen.PROG,), None)
    return found


def _children(tree: Tree, path: tuple[str, ...]) -> set[str]:
    return {p[-1] for p in tree if len(p) == len(path) + 1 and p[: len(path)] == path}


def _section(page: str, name: str) -> str:
    """The body of one ``.SH`` section of a roff page ("" when absent)."""
    match = re.search(rf"^\.SH {name}\n(.*?)(?=^\.SH |\Z)", page, re.M | re.S)
    return match.group(1) if match else ""


def _roff(text: str) -> str:
    return text.replace("-", "\\-")


@pytest.fixture(scope="module")
def tree() -> Tree:
    return _tree()


@pytest.fixture(scope="module")
def generated() -> dict[str, str]:
    return docgen.render()


def test_committed_files_are_fresh(generated: dict[str, str]) -> None:
    """completions/ and man/ match the CLI; otherwise run `make docs` and commit the result."""
    assert docgen.stale(ROOT, generated) == []
    assert docgen.main(["--check", "--root", str(ROOT)]) == 0


def test_check_names_every_stale_file_and_writes_nothing(
    tmp_path: Path, generated: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """--check reports changed, missing and leftover files and exits 1; a plain run repairs."""
    assert docgen.main(["--root", str(tmp_path)]) == 0
    (tmp_path / "man/llmproxy.1").write_text("stale\n")
    (tmp_path / "completions/llmproxy.fish").unlink()
    (tmp_path / "man/llmproxy-gone.1").write_text(".TH GONE 1\n")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    capsys.readouterr()

    assert docgen.main(["--check", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "man/llmproxy.1: differs" in err
    assert "completions/llmproxy.fish: missing" in err
    assert "man/llmproxy-gone.1: not generated" in err
    listed = [line for line in err.splitlines() if line.startswith(("man/", "completions/"))]
    assert len(listed) == 3
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before

    assert docgen.main(["--root", str(tmp_path)]) == 0
    assert not (tmp_path / "man/llmproxy-gone.1").exists()
    assert docgen.stale(tmp_path, generated) == []


def test_generation_is_deterministic(tmp_path: Path, generated: dict[str, str]) -> None:
    """Another process, directory, terminal width and locale produce the same bytes."""
    env = {**os.environ, "COLUMNS": "37", "LANG": "C", "LC_ALL": "C", "TERM": "dumb"}
    env.pop("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", None)
    subprocess.run(
        [sys.executable, "-m", "llmproxy.cli.docgen", "--root", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
    )
    written = {
        p.relative_to(tmp_path).as_posix(): p.read_text()
        for p in tmp_path.rglob("*")
        if p.is_file()
    }
    assert written == generated
    assert docgen.render() == generated
    machine = [str(ROOT), str(Path.home()), sys.prefix, sys.executable]
    for name, content in generated.items():
        assert content.isascii(), name
        assert not [m for m in machine if m in content], name
        assert not re.search(r"\b(19|20)\d\d-\d\d-\d\d\b", content), name


def test_every_command_has_a_man_page(tree: Tree, generated: dict[str, str]) -> None:
    """Each leaf and each group gets man/<path joined by dashes>.1, and nothing else does."""
    pages = {f"man/{'-'.join(path)}.1" for path in tree}
    leaves = {path for path in tree if not _children(tree, path)}
    assert leaves, "the app has no commands"
    assert {f"man/{'-'.join(path)}.1" for path in leaves} <= pages
    assert {name for name in generated if name.startswith("man/")} == pages


def test_man_pages_document_the_command(tree: Tree, generated: dict[str, str]) -> None:
    """Sections present, every option and argument listed, groups list their subcommands."""
    pages = ["-".join(path) for path in tree]
    for path, (command, ctx) in tree.items():
        name = "-".join(path)
        page = generated[f"man/{name}.1"]
        th = page.splitlines()[0]
        assert th.startswith(f'.TH "{_roff(name.upper())}" "1" "{__version__}"'), th
        assert _section(page, "NAME").startswith(f"{_roff(name)} \\- "), name
        assert _roff(" ".join(path)) in _section(page, "SYNOPSIS"), name

        options, arguments = _section(page, "OPTIONS"), _section(page, "ARGUMENTS")
        for param in command.get_params(ctx):
            if param.get_help_record(ctx) is None:
                continue  # hidden
            if param.param_type_name == "option":
                for opt in [*param.opts, *param.secondary_opts]:
                    assert f"\\fB{_roff(opt)}\\fR" in options, (name, opt)
            else:
                assert _roff(param.metavar or param.name) in arguments, (name, param.name)

        commands = _section(page, "COMMANDS")
        for child in _children(tree, path):
            assert f".TP\n\\fB{_roff(child)}\\fR\n" in commands, (name, child)

        exit_status = _section(page, "EXIT STATUS")
        for code in range(4):
            assert f".B {code}\n" in exit_status, (name, code)

        see_also = _section(page, "SEE ALSO")
        for other in pages:
            if other != name:
                assert f"\\fB{_roff(other)}\\fR(1)" in see_also, (name, other)


def test_exit_status_documents_every_exit_code() -> None:
    """EXIT STATUS lists exactly the codes the operator commands exit with."""
    assert [code for code, _ in docgen.EXIT_STATUS] == sorted(int(c) for c in ExitCode)


def _sample_app() -> typer.Typer:
    """An app with the help-text shapes the real one may grow: markup, \\b, epilogs, hidden."""
    sample = typer.Typer(name="llmproxy", rich_markup_mode="rich")
    group = typer.Typer(help="Manage [bold]things[/bold].")
    sample.add_typer(group, name="things")

    @group.command("add", epilog=f"Read the docs.\n\n{EXIT_CODES_EPILOG}")
    def add(
        name: Annotated[str, typer.Argument(help="Its name – any “text”.")],
        tag: Annotated[list[str] | None, typer.Option("--tag", "-t", help="A [i]tag[/i].")] = None,
        rpm: Annotated[int, typer.Option(help="Per minute.")] = 60,
        secret: Annotated[str, typer.Option(hidden=True)] = "",
    ) -> None:
        """Add a thing.

        .dots and 'quotes at line starts, a \\backslash.

        \b
        llmproxy things add x
          --tag y
        """

    @group.command("secret", hidden=True)
    def secret() -> None:
        """Not for operators."""

    return sample


def test_rendering_of_help_text_shapes() -> None:
    """Markup is dropped, roff specials escaped, \\b kept verbatim, hidden things left out."""
    files = docgen.render(docgen.walk(typer.main.get_command(_sample_app())))
    assert sorted(name for name in files if name.startswith("man/")) == [
        "man/llmproxy-things-add.1",
        "man/llmproxy-things.1",
        "man/llmproxy.1",
    ]
    page = files["man/llmproxy-things-add.1"]
    assert page.isascii()
    assert "[bold]" not in files["man/llmproxy-things.1"]
    assert "Manage things." in files["man/llmproxy-things.1"]
    description = _section(page, "DESCRIPTION")
    assert "\\&.dots and \\(aqquotes at line starts, a \\ebackslash." in description
    assert ".nf\nllmproxy things add x\n  \\-\\-tag y\n.fi" in description
    assert "Read the docs." in description
    assert "Exit codes" not in page  # the EXIT STATUS section says it
    assert "Its name \\[u2013] any \\[u201C]text\\[u201D]." in _section(page, "ARGUMENTS")
    options = _section(page, "OPTIONS")
    assert "A tag." in options
    assert "Per minute. [default: 60]" in options
    assert "secret" not in options
    assert _groff_warnings(page) in ("", None)


def _groff_warnings(page: str) -> str | None:
    """What `groff -man -Tutf8 -ww` says about a page; None without groff."""
    if shutil.which("groff") is None:
        return None
    result = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-z"],
        input=page,
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stderr if result.returncode == 0 else f"exit {result.returncode}"


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_groff_renders_pages_without_warnings(generated: dict[str, str]) -> None:
    """`groff -man -Tutf8 -ww` accepts every page silently."""
    for name, content in generated.items():
        if name.startswith("man/"):
            assert _groff_warnings(content) == "", name


def test_console_script_is_the_completed_program() -> None:
    """The scripts call the program back as PROG, so it must be the installed script name."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"][docgen.PROG] == "llmproxy.cli.main:run"


@pytest.mark.parametrize("shell", sorted(docgen.COMPLETION_FILES))
def test_completion_script_is_the_programs_own(shell: str, generated: dict[str, str]) -> None:
    """Each file is what the program itself emits for `_LLMPROXY_COMPLETE=source_<shell>`."""
    result = subprocess.run(
        [str(ENTRY_POINT)],
        env={**os.environ, docgen.completion_var(): f"source_{shell}"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    script = generated[f"completions/{docgen.COMPLETION_FILES[shell]}"]
    assert result.stdout.strip() + "\n" == script


@pytest.mark.parametrize("shell", sorted(docgen.COMPLETION_FILES))
def test_program_answers_the_scripts_request(
    shell: str, tree: Tree, generated: dict[str, str]
) -> None:
    """The instruction the script sends makes the program propose the top-level commands."""
    script = generated[f"completions/{docgen.COMPLETION_FILES[shell]}"]
    instructions = set(re.findall(rf"{docgen.completion_var()}=(\w+)", script))
    assert instructions == {f"complete_{shell}"}
    env = {
        docgen.completion_var(): f"complete_{shell}",
        "COMP_WORDS": f"{docgen.PROG} ",
        "COMP_CWORD": "1",
        "_TYPER_COMPLETE_ARGS": f"{docgen.PROG} ",
        "_TYPER_COMPLETE_FISH_ACTION": "get-args",
    }
    result = CliRunner().invoke(app, [], env=env, prog_name=docgen.PROG)
    assert result.exit_code == 0, result.output
    for name in _children(tree, (docgen.PROG,)):
        assert re.search(rf"(^|\W){re.escape(name)}(\W|$)", result.stdout, re.M), (shell, name)


def _bash_complete(script: Path, queries: list[list[str]]) -> list[list[str]]:
    """Source the bash script and complete each word list as bash would (last word typed)."""
    lines = [f"source {shlex.quote(str(script))}"]
    for words in queries:
        quoted = " ".join(shlex.quote(w) for w in words)
        cur, prev = shlex.quote(words[-1]), shlex.quote(words[-2])
        lines += [
            f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; COMPREPLY=()",
            f"_llmproxy_completion {docgen.PROG} {cur} {prev}",
            'printf "%s\\n" "${COMPREPLY[@]}"; echo "--end--"',
        ]
    env = {**os.environ, "PATH": f"{ENTRY_POINT.parent}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", "\n".join(lines)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=50,
    ).stdout
    answers = out.split("--end--\n")[:-1]
    return [[w for w in answer.splitlines() if w] for answer in answers]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
@pytest.mark.skipif(not ENTRY_POINT.exists(), reason="the llmproxy entry point is not installed")
def test_bash_completion_proposes_subcommands(tree: Tree, tmp_path: Path) -> None:
    """Sourced in bash, the script completes every group's subcommands via the entry point."""
    assert docgen.main(["--root", str(tmp_path)]) == 0
    script = tmp_path / "completions" / docgen.COMPLETION_FILES["bash"]
    groups = [path for path in tree if _children(tree, path)]
    top = sorted(_children(tree, (docgen.PROG,)))
    queries = [[*group, ""] for group in groups] + [[docgen.PROG, name[:2]] for name in top]
    answers = _bash_complete(script, queries)
    assert len(answers) == len(queries)
    for group, answer in zip(groups, answers, strict=False):
        assert set(answer) == _children(tree, group), group
    for name, answer in zip(top, answers[len(groups) :], strict=True):
        assert name in answer, name
