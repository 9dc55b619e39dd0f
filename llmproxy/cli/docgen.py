"""Generate shell completions and man pages from the live ``llmproxy`` command tree.

Run ``python -m llmproxy.cli.docgen`` (``make docs``) after changing a command; ``--check``
writes nothing and exits 1 naming every file that is stale, missing or no longer generated,
so the committed ``completions/`` and ``man/`` can never drift from the CLI. Nothing here
names a subcommand: pages come from walking whatever tree ``typer.main.get_command`` builds.

Completions: typer 0.29 vendors its own click (``typer._click``) and answers
``_LLMPROXY_COMPLETE`` with its own, click-7-style instructions (``complete_bash``, not
click 8's ``bash_complete``) and output formats. Scripts from click 8's ``BashComplete``
& co. therefore get "Shell complete not supported." from the entry point, so the scripts
are the ones typer's ``--show-completion``/``--install-completion`` produce, byte for byte.

Man pages: roff built from the same help text, epilog and parameter records ``--help`` shows,
so a default or an env var documented in one is documented in the other (the exit-code epilog
of the daemon commands becomes the EXIT STATUS section every page has). Output depends only
on the command tree and the package version: no dates, no paths of this machine, ASCII only.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import typer.main
from rich.text import Text
from typer._click import Command, Context
from typer._completion_shared import get_completion_script
from typer.core import TyperGroup

from llmproxy import __version__
from llmproxy.cli import shipped
from llmproxy.cli.completion import BASH_SCRIPT
from llmproxy.cli.main import app
from llmproxy.cli.output import EXIT_CODES_EPILOG

#: The console script, and the completion file per shell: the files the wheel ships
#: (:mod:`llmproxy.cli.shipped` defines them).
PROG = shipped.PROG
COMPLETION_FILES = shipped.COMPLETION_FILES

#: The exit codes of ``llmproxy`` commands (``ExitCode`` in :mod:`llmproxy.cli.output`; a test
#: keeps the two in step), documented on every page.
EXIT_STATUS = (
    (0, "Success."),
    (1, "The daemon refused the operation (replay: the error rate exceeded --max-error-rate)."),
    (2, "Usage or configuration error."),
    (3, "No daemon answers on the admin socket (replay: the target is unreachable)."),
)

#: The directories this module owns: every file in them is generated.
OUTPUT_DIRS = ("completions", "man")

_SHORT_HELP_LIMIT = 300


@dataclass(frozen=True)
class Node:
    """One command of the tree with the context ``--help`` would render it in."""

    path: tuple[str, ...]
    command: Command
    ctx: Context
    children: tuple[Node, ...]

    @property
    def page(self) -> str:
        """The man page name: the command path joined by dashes (``llmproxy-keys-add``)."""
        return "-".join(self.path)


def walk(command: Command, path: tuple[str, ...] = (PROG,), parent: Context | None = None) -> Node:
    """The visible command tree under ``command``, subcommands in ``--help`` order."""
    ctx = command.context_class(command, info_name=path[-1], parent=parent)
    children: list[Node] = []
    if isinstance(command, TyperGroup):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                children.append(walk(sub, (*path, name), ctx))
    return Node(path, command, ctx, tuple(children))


def nodes(root: Node) -> Iterator[Node]:
    """Every node of the tree, parents before their children."""
    yield root
    for child in root.children:
        yield from nodes(child)


def cli_tree() -> Node:
    """The tree of the real ``llmproxy`` app, as the entry point builds it."""
    return walk(typer.main.get_command(app))


# --- roff -------------------------------------------------------------------------------


def _esc(text: str) -> str:
    """Escape text for a roff text line: literal backslashes, dashes and quotes, ASCII only.

    Dashes become ``\\-`` so options copy-paste as ASCII; non-ASCII characters become
    ``\\[uXXXX]`` because groff reads its input as Latin-1 unless ``preconv`` runs first.
    """
    out = text.replace("\\", "\\e").replace("-", "\\-").replace("'", "\\(aq")
    out = out.replace("`", "\\(ga")
    out = "".join(c if ord(c) < 128 else f"\\[u{ord(c):04X}]" for c in out)
    # A line starting with "." or "'" would be a request.
    return "\n".join(
        f"\\&{line}" if line.startswith((".", "'")) else line for line in out.split("\n")
    )


def _plain(text: str, command: Command) -> str:
    """Help text as ``--help`` shows it: rich markup removed when the command renders it."""
    if getattr(command, "rich_markup_mode", None) == "rich":
        return Text.from_markup(text).plain
    return text


def _paragraphs(text: str, command: Command | None = None) -> list[str]:
    """Help text split into roff paragraphs; a click ``\\b`` paragraph keeps its lines.

    With ``command``, markup is removed per paragraph, after looking for ``\\b``: rich
    drops that control character along with the markup.
    """
    paras = []
    for para in re.split(r"\n\s*\n", text.strip()):
        verbatim = para.startswith("\b")
        body = para[1:].strip("\n") if verbatim else " ".join(para.split())
        body = _plain(body, command) if command is not None else body
        if body and verbatim:
            paras.append(f".nf\n{_esc(body)}\n.fi")
        elif body:
            paras.append(_esc(body))
    return paras


def _long_help(command: Command) -> str:
    """The full help, cut at click's ``\\f`` marker like ``--help`` does."""
    return inspect.cleandoc(command.help or "").partition("\f")[0]


def _epilog(command: Command) -> str:
    """The epilog ``--help`` prints last, minus the exit-code line EXIT STATUS already has."""
    epilog = inspect.cleandoc(command.epilog or "")
    return "\n\n".join(p for p in re.split(r"\n\s*\n", epilog) if p != EXIT_CODES_EPILOG)


def _short_help(command: Command) -> str:
    """The first sentence of the help: the NAME line and a parent's COMMANDS entry."""
    return _plain(command.get_short_help_str(_SHORT_HELP_LIMIT), command)


def _styled(text: str, pattern: str, font: str) -> str:
    """Escape ``text`` and set the matches of ``pattern`` in ``font`` (B or I)."""
    out, pos = [], 0
    for match in re.finditer(pattern, text):
        out += [_esc(text[pos : match.start()]), f"\\f{font}{_esc(match.group())}\\fR"]
        pos = match.end()
    return "".join([*out, _esc(text[pos:])])


def _term(term: str, kind: str) -> str:
    """A parameter's ``--help`` column (``-c, --config <path>``): flags bold, values italic.

    An argument's own name is a placeholder too, so it is italic like its type.
    """
    name = r"^[\w-]+" if kind == "argument" else r"(?<![\w-])--?\w[\w-]*"
    styled = _styled(term, name, "I" if kind == "argument" else "B")
    # "\\:" lets a long choice list (<a|b|c>) break after a "|" instead of overflowing.
    return re.sub(r"<[^<>]*>", lambda m: "\\fI" + m.group().replace("|", "|\\:") + "\\fR", styled)


def _synopsis(node: Node) -> str:
    """The usage line: the command path bold, placeholders italic, ``{x}`` (required) as x."""
    pieces = " ".join(node.command.collect_usage_pieces(node.ctx))
    pieces = re.sub(r"\{([^{}]*)\}", r"\1", pieces)
    command = _esc(" ".join(node.path))
    return f".B {command}\n" + _styled(pieces, r"[A-Za-z_][\w-]*", "I")


def _params(node: Node, kind: str) -> list[str]:
    """``.TP`` entries for the visible parameters of one kind ("option" or "argument")."""
    entries = []
    for param in node.command.get_params(node.ctx):
        record = param.get_help_record(node.ctx)
        if record is None or param.param_type_name != kind:
            continue
        term, help_text = record
        own = getattr(param, "help", None)
        if isinstance(own, str) and own and help_text.startswith(own):
            # Only the author's text is markup; "[default: x]" after it is literal.
            help_text = _plain(own, node.command) + help_text[len(own) :]
        body = "\n.IP\n".join(_paragraphs(help_text))
        entries.append(f".TP\n{_term(term, kind)}\n{body}".rstrip("\n"))
    return entries


def render_page(node: Node, pages: Sequence[str]) -> str:
    """The roff man page (section 1) of one command; ``pages`` are all pages, for SEE ALSO."""
    title = _esc(node.page.upper())
    lines = [
        f'.TH "{title}" "1" "{__version__}" "{PROG} {__version__}" "User Commands"',
        # No hyphenation, ragged right: flags and page names must not break across lines.
        ".nh",
        ".ad l",
        ".SH NAME",
        f"{_esc(node.page)} \\- {_esc(_short_help(node.command) or ' '.join(node.path))}",
        ".SH SYNOPSIS",
        _synopsis(node),
    ]
    description = _paragraphs(_long_help(node.command), node.command)
    description += _paragraphs(_epilog(node.command), node.command)
    if description:
        lines += [".SH DESCRIPTION", "\n.PP\n".join(description)]
    for heading, kind in (("ARGUMENTS", "argument"), ("OPTIONS", "option")):
        entries = _params(node, kind)
        if entries:
            lines += [f".SH {heading}", *entries]
    if node.children:
        lines.append(".SH COMMANDS")
        for child in node.children:
            summary = _esc(_short_help(child.command))
            see = f"See \\fB{_esc(child.page)}\\fR(1)."
            lines += [".TP", f"\\fB{_esc(child.path[-1])}\\fR", f"{summary} {see}".strip()]
    lines.append(".SH EXIT STATUS")
    for code, meaning in EXIT_STATUS:
        lines += [".TP", f".B {code}", _esc(meaning)]
    others = sorted(p for p in pages if p != node.page)
    if others:
        refs = ",\n".join(f"\\fB{_esc(p)}\\fR(1)" for p in others)
        lines += [".SH SEE ALSO", refs]
    return "\n".join(lines) + "\n"


# --- output -----------------------------------------------------------------------------


def completion_var(prog: str = PROG) -> str:
    """The env var the entry point answers completion requests on, derived as typer does."""
    return "_{}_COMPLETE".format(prog.replace("-", "_").upper())


def render_completions() -> dict[str, str]:
    """The completion scripts: what ``llmproxy --show-completion <shell>`` prints, but for bash
    :data:`llmproxy.cli.completion.BASH_SCRIPT`, which can turn off the file-name fallback when
    a key or backend name is wanted and no daemon answers."""
    return {
        f"completions/{filename}": (
            BASH_SCRIPT
            if shell == "bash"
            else get_completion_script(prog_name=PROG, complete_var=completion_var(), shell=shell)
            + "\n"
        )
        for shell, filename in COMPLETION_FILES.items()
    }


def render(root: Node | None = None) -> dict[str, str]:
    """Every generated file, keyed by its path relative to the project root."""
    tree = root if root is not None else cli_tree()
    all_nodes = list(nodes(tree))
    pages = [n.page for n in all_nodes]
    duplicates = sorted({p for p in pages if pages.count(p) > 1})
    if duplicates:
        raise ValueError(f"two command paths map to the same man page: {duplicates}")
    files = render_completions()
    for node in all_nodes:
        files[f"man/{node.page}.1"] = render_page(node, pages)
    return files


def _existing(root: Path) -> set[str]:
    """Files now under the generated directories, relative to ``root``."""
    return {
        path.relative_to(root).as_posix()
        for name in OUTPUT_DIRS
        for path in (root / name).rglob("*")
        if path.is_file()
    }


def stale(root: Path, files: dict[str, str]) -> list[str]:
    """Relative paths that differ from ``files``: changed, missing, or not generated at all."""
    problems = []
    for rel in sorted(_existing(root) | files.keys()):
        target = root / rel
        if rel not in files:
            problems.append(f"{rel}: not generated (a removed or renamed command?)")
        elif not target.is_file():
            problems.append(f"{rel}: missing")
        elif target.read_bytes() != files[rel].encode():
            problems.append(f"{rel}: differs")
    return problems


def write(root: Path, files: dict[str, str]) -> list[str]:
    """Bring the directories in line with ``files``; returns what changed.

    Stale files are deleted, so a removed command's page does not linger; unchanged files
    are left alone so their mtimes (and make) stay quiet.
    """
    changed = []
    for rel in sorted(_existing(root) - files.keys()):
        (root / rel).unlink()
        changed.append(f"removed {rel}")
    for rel, content in sorted(files.items()):
        target = root / rel
        if target.is_file() and target.read_bytes() == content.encode():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content.encode())
        changed.append(f"wrote {rel}")
    return changed


def _default_root() -> Path:
    """The source checkout holding this module, else the working directory."""
    checkout = Path(__file__).resolve().parents[2]
    return checkout if (checkout / "pyproject.toml").is_file() else Path.cwd()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m llmproxy.cli.docgen [--check] [--root DIR]``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m llmproxy.cli.docgen",
        description="Generate completions/ and man/ from the llmproxy command tree.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 listing the files that are not up to date",
    )
    parser.add_argument(
        "--root", type=Path, default=None, help="project directory (default: this checkout)"
    )
    args = parser.parse_args(argv)
    root: Path = args.root or _default_root()
    files = render()
    if args.check:
        problems = stale(root, files)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print(
                "generated docs are out of date: run `make docs` (python -m llmproxy.cli.docgen)",
                file=sys.stderr,
            )
            return 1
        return 0
    for line in write(root, files):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
