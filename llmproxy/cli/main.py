"""``llmproxy``: one command for the daemon and the operator's tools (typer + rich)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer
import typer.main
from rich.console import Console

from llmproxy import __version__
from llmproxy.cli import backends, keys, ops, replay, shipped, teams, usage
from llmproxy.cli.output import EXIT_CODES_EPILOG, ExitCode

app = typer.Typer(
    name="llmproxy",
    help="A fast, operator-friendly gateway for self-hosted LLM inference servers.",
    no_args_is_help=True,
    add_completion=True,
)
config_app = typer.Typer(help="Work with configuration files.", no_args_is_help=True)
app.add_typer(config_app, name="config")
# Operator commands: they talk to a running daemon over its admin socket (docs/admin-api.md).
app.command("status", epilog=EXIT_CODES_EPILOG)(ops.status)
app.command("reload", epilog=EXIT_CODES_EPILOG)(ops.reload)
app.add_typer(keys.app, name="keys")
app.add_typer(teams.app, name="teams")
app.add_typer(backends.app, name="backends")
app.add_typer(usage.app, name="usage")
# Load testing: replay recorded or synthetic traffic against any OpenAI-compatible endpoint.
app.command("replay", help=replay.HELP, epilog=replay.EPILOG)(replay.replay)
# What the package ships beside the code: completion scripts and the example config.
app.command("completions")(shipped.completions)
config_app.command("example")(shipped.config_example)

console = Console()
err_console = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Config file (default: $LLMPROXY_CONFIG, then ./config.yaml).",
        envvar="LLMPROXY_CONFIG",
    ),
]


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _resolve_config(path: Path | None) -> Path:
    if path is not None:
        return path
    default = Path("config.yaml")
    if default.exists():
        return default
    err_console.print(
        "[red]error:[/] no config file: pass --config FILE, set LLMPROXY_CONFIG, "
        "or run [bold]llmproxy serve --demo[/] for the embedded default"
    )
    raise typer.Exit(2)


@app.command()
def serve(
    config: ConfigOption = None,
    demo: Annotated[
        bool, typer.Option(help="Run on the embedded default with a built-in mock backend.")
    ] = False,
    listen: Annotated[
        str | None, typer.Option(help="Listen address, overriding the config (e.g. :8000).")
    ] = None,
    mock_port: Annotated[int, typer.Option(help="Port of the demo's mock backend.")] = 9001,
) -> None:
    """Run the gateway."""
    from llmproxy.config.errors import ConfigError
    from llmproxy.config.loader import load_config
    from llmproxy.daemon import server
    from llmproxy.daemon.runtime import runtime_problem

    if demo:
        _setup_logging("info")
        address = listen or "127.0.0.1:8000"
        host, _, port = address.rpartition(":")
        base = f"http://{host or '127.0.0.1'}:{port}"
        demo_key = server.create_demo_key(Path.cwd())
        console.print(
            f"[bold green]llmproxy {__version__}[/] demo: gateway on {base}, "
            f"mock backend on http://127.0.0.1:{mock_port}\n"
            f"A demo API key was created in {server.DEMO_KEY_STORE} (shown only now):\n"
            f"  export LLMPROXY_KEY={demo_key}\n"
            f'Try:\n  curl {base}/v1/models -H "Authorization: Bearer $LLMPROXY_KEY"\n'
            f'  curl -N {base}/v1/chat/completions -H "Authorization: Bearer $LLMPROXY_KEY" '
            f"-H 'Content-Type: application/json' "
            f'-d \'{{"model": "{server.DEMO_MODEL}", "messages": '
            f'[{{"role": "user", "content": "Hello"}}], "stream": true}}\'',
            soft_wrap=True,
            markup=True,
            highlight=False,
        )
        server.run(server.serve_demo(address, mock_port, Path.cwd()))
        return
    path = _resolve_config(config)
    try:
        loaded = load_config(path, os.environ)
    except ConfigError as exc:
        err_console.print(f"[red]error:[/] {path}: the config is invalid", soft_wrap=True)
        err_console.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    if listen:
        loaded = server.with_listen(loaded, listen)
    # Not resolved: a Kubernetes ConfigMap mounts the file as a symlink into a directory that is
    # swapped on every update; the link's own directory is the stable one.
    base_dir = path.absolute().parent
    problem = runtime_problem(loaded, base_dir)
    if problem is not None:
        err_console.print(f"[red]error:[/] {path}: the config cannot be served", soft_wrap=True)
        err_console.print(problem, markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    _setup_logging(loaded.logging.level)
    if loaded.server.workers > 1:
        from llmproxy.daemon.workers import supervise

        raise typer.Exit(supervise(loaded, base_dir, path.absolute(), listen))
    server.run(server.serve(loaded, base_dir, config_path=path.absolute(), listen=listen))


@config_app.command("check")
def config_check(
    file: Annotated[Path, typer.Argument(help="The config file to validate; - reads stdin.")],
) -> None:
    """Validate a config file; exit 2 (a config error, as serve does) with file:line messages
    when it is wrong."""
    import sys

    from llmproxy.config.check import check_config
    from llmproxy.daemon.runtime import runtime_problem

    stdin = str(file) == "-"
    base_dir = Path.cwd() if stdin else file.absolute().parent
    # Beyond the model: what only a built runtime finds (Lua syntax, unreadable script files).
    messages, ok = check_config(
        "<stdin>" if stdin else file,
        deeper=lambda config: runtime_problem(config, base_dir),
        text=sys.stdin.read() if stdin else None,
    )
    for line in messages:
        (console if ok else err_console).print(line, markup=False, highlight=False, soft_wrap=True)
    if not ok:
        raise typer.Exit(ExitCode.USAGE)


@app.command("mock-backend")
def mock_backend(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 9001,
    models: Annotated[str, typer.Option(help="Comma-separated model names.")] = "mock-model",
    tokens: Annotated[int, typer.Option(help="Completion tokens when max_tokens is absent.")] = 16,
    ttft: Annotated[float, typer.Option(help="Seconds before the first token.")] = 0.0,
    itl: Annotated[float, typer.Option(help="Seconds between tokens.")] = 0.0,
    name: Annotated[str, typer.Option(help="Name echoed in the x-mock-backend header.")] = "mock",
    slots: Annotated[
        int, typer.Option(help="Generations at once; the rest queue (0: unlimited).")
    ] = 0,
    prefill_per_token: Annotated[
        float, typer.Option(help="Seconds of prefill per uncached prompt token.")
    ] = 0.0,
    prefix_cache_blocks: Annotated[
        int, typer.Option(help="Size of the LRU prefix cache, in blocks (0: no cache).")
    ] = 0,
    block_chars: Annotated[int, typer.Option(help="Prompt characters per cache block.")] = 64,
) -> None:
    """Run the OpenAI-compatible mock backend (a fake vLLM) for demos, tests and benchmarks.

    With --slots, --prefill-per-token and --prefix-cache-blocks it behaves like a GPU server:
    batch slots with a queue, prefill paid only for prompt tokens not in its prefix cache, and
    vLLM's load and prefix-cache metrics on /metrics.
    """
    from llmproxy.mock import MockSettings, serve_forever

    settings = MockSettings(
        models=tuple(m.strip() for m in models.split(",") if m.strip()),
        tokens=tokens,
        ttft=ttft,
        itl=itl,
        name=name,
        slots=slots,
        prefill_per_token=prefill_per_token,
        prefix_cache_blocks=prefix_cache_blocks,
        block_chars=block_chars,
    )
    serve_forever(settings, host, port)


@app.command()
def version() -> None:
    """Print the version."""
    console.print(__version__)


def run() -> None:
    """Console-script entry point.

    Builds the command tree first (typer registers its shell-completion classes then) and puts
    :mod:`llmproxy.cli.completion`'s in their place, so a key or backend completion that finds
    no daemon offers nothing rather than file names.
    """
    from llmproxy.cli import completion

    command = typer.main.get_command(app)
    completion.install()
    command()
