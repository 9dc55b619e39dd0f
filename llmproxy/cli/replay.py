"""``llmproxy replay``: send recorded or synthetic requests to an OpenAI-compatible endpoint and
report what its users felt (TTFT, inter-token latency, total latency, errors).

This module only turns options into a :class:`~llmproxy.replay.job.ReplayJob`, prints, and maps
failures to exit codes; the work is in :mod:`llmproxy.replay`. Options are checked before any
request is sent: a mistake is a usage error (2), never a half-made run.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from llmproxy.cli.output import (
    ExitCode,
    err_console,
    json_text,
    print_error,
    print_note,
    stdout_console,
)
from llmproxy.cli.replay_render import render_comparison, render_report, run_label
from llmproxy.config.units import parse_duration
from llmproxy.replay import source
from llmproxy.replay.client import TargetRefused, TargetUnreachable, normalize_target
from llmproxy.replay.compare import (
    CompareError,
    compare,
    comparison_document,
    load_document,
    setting_differences,
)
from llmproxy.replay.job import JobError, ProgressFactory, ReplayJob, Timing, run_job
from llmproxy.replay.progress import ProgressView
from llmproxy.replay.runner import Live
from llmproxy.replay.schedule import Arrivals, Bounds
from llmproxy.replay.synthetic import DEFAULT_SPREAD, Dist, LengthDistribution, SyntheticLoad

EPILOG = (
    "Exit codes: 0 the run completed; 1 its error rate exceeded --max-error-rate; "
    "2 usage error, unreadable file, or a malformed line with --strict; "
    "3 the target is unreachable; 130 interrupted (the partial report is still printed)."
)

HELP = (
    "Replay recorded (or synthetic) requests against an OpenAI-compatible endpoint and report "
    "what users felt: time to first token, inter-token latency, total latency, errors.\n\n"
    "Timing: by default the recording's own arrival times, scaled by --speed. --rate R sends R "
    "requests per second in open loop: latency counts from each request's scheduled time, so a "
    "stalled server cannot hide behind a waiting client. --concurrency C keeps C requests in "
    "flight (closed loop).\n\n"
    "A request recorded with its body is sent as recorded (--model replaces the model); one "
    "recorded with only its shape is sent with made-up text of the recorded size. Streamed "
    "requests ask for stream_options.include_usage to count output tokens exactly."
)
"""The command's help (passed at registration: a docstring's later paragraphs would keep their
line breaks in ``--help``)."""

INTERRUPTED = 130
"""Exit code after Ctrl-C, as shells report a SIGINT."""

_TARGET = "Target"
_TIMING = "Timing"
_SYNTHETIC = "Synthetic load (--synthetic)"
_OUTPUT = "Output"


def _usage(message: str) -> NoReturn:
    print_error(message)
    raise typer.Exit(ExitCode.USAGE)


def _check_options(
    *,
    files: list[Path],
    synthetic: bool,
    target: str | None,
    speed: float,
    rate: float | None,
    concurrency: int | None,
    arrivals: Arrivals,
    duration: str | None,
    limit: int | None,
    timeout: float,
    max_error_rate: float | None,
) -> tuple[str, float | None]:
    """The normalized target URL and the duration in seconds; exits 2 on a bad combination."""
    if not files and not synthetic:
        _usage("give a recording FILE to replay, or --synthetic for made-up load")
    if files and synthetic:
        _usage("give a recording FILE or --synthetic, not both")
    if not target:
        _usage("--target URL is required (the gateway, or a backend directly)")
    try:
        base = normalize_target(target)
    except ValueError as exc:
        _usage(f"--target: {exc}")
    if rate is not None and concurrency is not None:
        _usage("--rate (open loop) and --concurrency (closed loop) exclude each other")
    if not (math.isfinite(speed) and speed > 0):
        _usage(f"--speed must be above 0, got {speed:g}")
    if speed != 1.0 and (rate is not None or concurrency is not None or synthetic):
        _usage(
            "--speed scales the recording's own timing; it does not go with --rate, "
            "--concurrency or --synthetic"
        )
    if rate is not None and not (math.isfinite(rate) and rate > 0):
        _usage(f"--rate must be above 0 requests per second, got {rate:g}")
    if arrivals is not Arrivals.EVEN and rate is None:
        _usage("--arrivals spaces the sends of --rate; give --rate too")
    if concurrency is not None and concurrency < 1:
        _usage(f"--concurrency must be at least 1, got {concurrency}")
    if limit is not None and limit < 1:
        _usage(f"--limit must be at least 1, got {limit}")
    if not (math.isfinite(timeout) and timeout > 0):
        _usage(f"--timeout must be above 0 seconds, got {timeout:g}")
    if max_error_rate is not None and not 0 <= max_error_rate <= 1:
        _usage(f"--max-error-rate is a fraction from 0 to 1 (0.01 = 1 %), got {max_error_rate:g}")
    seconds: float | None = None
    if duration is not None:
        try:
            seconds = parse_duration(duration)
        except ValueError as exc:
            _usage(f"--duration: {exc}")
        if seconds <= 0:
            _usage("--duration must be above 0")
    if synthetic and rate is None and concurrency is None:
        _usage("--synthetic needs --rate R (open loop) or --concurrency C (closed loop)")
    if synthetic and seconds is None and limit is None:
        _usage("--synthetic needs a bound: --duration or --limit")
    return base, seconds


def _parse_headers(values: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for value in values:
        name, colon, text = value.partition(":")
        if not colon or not name.strip() or any(c.isspace() for c in name.strip()):
            _usage(f"--header: expected 'Name: value', got {value!r}")
        headers[name.strip()] = text.strip()
    return headers


def _scan(paths: list[Path], strict: bool) -> source.Scan:
    """The recording's first pass, its problems printed; exits 2 when it cannot be replayed."""
    try:
        scan = source.scan(paths, strict=strict)
    except source.SourceError as exc:
        print_error(f"{exc}" + (" (--strict: nothing was sent)" if strict else ""))
        raise typer.Exit(ExitCode.USAGE) from None
    for problem in scan.problems:
        print_note(f"warning: {problem}; skipped")
    hidden = scan.malformed - len(scan.problems)
    if hidden > 0:
        print_note(f"warning: {hidden} more malformed lines skipped")
    if scan.requests == 0:
        print_error(f"{', '.join(map(str, paths))}: no request to replay")
        raise typer.Exit(ExitCode.USAGE)
    return scan


def _emit(document: object, *, json_output: bool, output: Path | None) -> None:
    """The JSON document to ``--output PATH`` and, with ``--json``, to stdout."""
    text = json_text(document)
    if output is not None:
        try:
            output.write_text(text)
        except OSError as exc:
            print_error(f"--output: cannot write {output}: {exc.strerror or exc}")
            raise typer.Exit(ExitCode.USAGE) from None
    if json_output:
        sys.stdout.write(text)
        sys.stdout.flush()


def _compare(files: tuple[Path, Path], json_output: bool, output: Path | None) -> None:
    try:
        a, b = (load_document(path) for path in files)
    except CompareError as exc:
        _usage(str(exc))
    names = (str(files[0]), str(files[1]))
    _emit(comparison_document(a, b, names), json_output=json_output, output=output)
    if json_output:
        return
    labels = (run_label(f"A {names[0]}", a), run_label(f"B {names[1]}", b))
    stdout_console().print(
        render_comparison(labels, compare(a, b), setting_differences(a, b)),
        soft_wrap=False,
        highlight=False,
    )


def replay(
    files: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="[FILE]...",
            help="Recording to replay, as the daemon writes it (JSON Lines); several files "
            "(rotated ones, or one per worker) are merged in arrival order.",
            show_default=False,
        ),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(
            "--target",
            "-t",
            help="Base URL of any OpenAI-compatible endpoint: the gateway, or a backend directly.",
            show_default=False,
            rich_help_panel=_TARGET,
        ),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(
            help="API key, sent as Authorization: Bearer.",
            envvar="LLMPROXY_KEY",
            show_default=False,
            rich_help_panel=_TARGET,
        ),
    ] = None,
    header: Annotated[
        list[str] | None,
        typer.Option(
            "--header",
            "-H",
            help="Extra header on every request, 'Name: value' (repeatable).",
            show_default=False,
            rich_help_panel=_TARGET,
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Model to ask for, instead of the recorded one; for --synthetic, default: the "
            "first the target's /v1/models lists.",
            show_default=False,
            rich_help_panel=_TARGET,
        ),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(
            help="Seconds one request may take before it counts as a timeout.",
            rich_help_panel=_TARGET,
        ),
    ] = 300.0,
    connections: Annotated[
        int | None,
        typer.Option(
            help="Connection pool size (default: the concurrency, or what the rate keeps in "
            "flight for 10 s answers).",
            show_default=False,
            rich_help_panel=_TARGET,
        ),
    ] = None,
    speed: Annotated[
        float,
        typer.Option(
            help="Replay the recording's own timing this many times faster (2.0: in half the "
            "time).",
            rich_help_panel=_TIMING,
        ),
    ] = 1.0,
    rate: Annotated[
        float | None,
        typer.Option(
            help="Open loop: send R requests per second whatever the answers; latency counts "
            "from each request's scheduled time.",
            show_default=False,
            rich_help_panel=_TIMING,
        ),
    ] = None,
    arrivals: Annotated[
        Arrivals,
        typer.Option(
            help="Spacing of --rate sends: even, or poisson (random, same mean).",
            rich_help_panel=_TIMING,
        ),
    ] = Arrivals.EVEN,
    concurrency: Annotated[
        int | None,
        typer.Option(
            help="Closed loop: C requests in flight, each sent when the previous one ended.",
            show_default=False,
            rich_help_panel=_TIMING,
        ),
    ] = None,
    duration: Annotated[
        str | None,
        typer.Option(
            help="Stop sending after this long (10, 30s, 5m); requests in flight are awaited.",
            show_default=False,
            rich_help_panel=_TIMING,
        ),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit",
            "-n",
            help="Send at most N requests.",
            show_default=False,
            rich_help_panel=_TIMING,
        ),
    ] = None,
    strict: Annotated[
        bool,
        typer.Option(
            help="Refuse a recording with a malformed line (exit 2) instead of skipping the line.",
            rich_help_panel=_TIMING,
        ),
    ] = False,
    synthetic: Annotated[
        bool,
        typer.Option(help="Made-up requests instead of a recording.", rich_help_panel=_SYNTHETIC),
    ] = False,
    prompt_tokens: Annotated[
        int, typer.Option(help="Mean prompt length in tokens.", rich_help_panel=_SYNTHETIC)
    ] = 512,
    prompt_dist: Annotated[
        Dist,
        typer.Option(help="Distribution of prompt lengths.", rich_help_panel=_SYNTHETIC),
    ] = Dist.LOGNORMAL,
    output_tokens: Annotated[
        int,
        typer.Option(
            help="Mean output length in tokens (sent as max_tokens).", rich_help_panel=_SYNTHETIC
        ),
    ] = 128,
    output_dist: Annotated[
        Dist,
        typer.Option(help="Distribution of output lengths.", rich_help_panel=_SYNTHETIC),
    ] = Dist.LOGNORMAL,
    spread: Annotated[
        float,
        typer.Option(
            help="Width of the distributions: uniform covers mean x (1 +- spread); lognormal "
            "has sigma = spread.",
            rich_help_panel=_SYNTHETIC,
        ),
    ] = DEFAULT_SPREAD,
    stream: Annotated[
        bool, typer.Option(help="Stream the answers.", rich_help_panel=_SYNTHETIC)
    ] = True,
    ignore_eos: Annotated[
        bool,
        typer.Option(
            help="Ask the server to generate exactly max_tokens (vLLM's ignore_eos).",
            rich_help_panel=_SYNTHETIC,
        ),
    ] = False,
    seed: Annotated[
        int,
        typer.Option(
            help="Seed of the lengths, texts and poisson arrivals.", rich_help_panel=_SYNTHETIC
        ),
    ] = 0,
    json_output: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print the report as one JSON document (settings and environment included) "
            "on stdout, instead of the table.",
            rich_help_panel=_OUTPUT,
        ),
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="PATH",
            help="Also write the report's JSON document to PATH (the table is still printed "
            "unless --json).",
            show_default=False,
            rich_help_panel=_OUTPUT,
        ),
    ] = None,
    quiet: Annotated[
        bool,
        typer.Option("--quiet", "-q", help="No progress bar.", rich_help_panel=_OUTPUT),
    ] = False,
    max_error_rate: Annotated[
        float | None,
        typer.Option(
            help="Exit 1 when more than this fraction of requests failed (0.01 = 1 %).",
            show_default=False,
            rich_help_panel=_OUTPUT,
        ),
    ] = None,
    compare_files: Annotated[
        tuple[Path, Path] | None,
        typer.Option(
            "--compare",
            help="Show two JSON reports (--json, --output) side by side with their "
            "differences, and exit.",
            show_default=False,
            rich_help_panel=_OUTPUT,
        ),
    ] = None,
) -> None:
    """Replay recorded or synthetic requests and report what users felt (see :data:`HELP`)."""
    paths = files or []
    if compare_files is not None:
        if paths or synthetic:
            _usage("--compare takes two reports and runs nothing: drop FILE / --synthetic")
        _compare(compare_files, json_output, output)
        return
    base, seconds = _check_options(
        files=paths,
        synthetic=synthetic,
        target=target,
        speed=speed,
        rate=rate,
        concurrency=concurrency,
        arrivals=arrivals,
        duration=duration,
        limit=limit,
        timeout=timeout,
        max_error_rate=max_error_rate,
    )
    headers = _parse_headers(header or [])
    load: SyntheticLoad | None = None
    if synthetic:
        try:
            load = SyntheticLoad(
                model=model or "",
                prompt=LengthDistribution(prompt_dist, prompt_tokens, spread),
                output=LengthDistribution(output_dist, output_tokens, spread),
                stream=stream,
                seed=seed,
                ignore_eos=ignore_eos,
            )
        except ValueError as exc:
            _usage(str(exc))
    if connections is not None and connections < 1:
        _usage(f"--connections must be at least 1, got {connections}")
    if output is not None and not output.parent.is_dir():
        _usage(f"--output: {output.parent} is not a directory")  # found now, not after the run
    scan = _scan(paths, strict) if paths else None
    job = ReplayJob(
        target=base,
        timing=Timing(speed=speed, rate=rate, arrivals=arrivals, concurrency=concurrency),
        bounds=Bounds(limit=limit, duration=seconds),
        recording=tuple(paths),
        synthetic=load,
        model=None if synthetic else model,
        key=key,
        headers=headers,
        timeout=timeout,
        connections=connections,
        seed=seed,
    )
    progress = None if quiet or not err_console.is_terminal else _progress_view(err_console)
    try:
        outcome = run_job(job, scan, progress)
    except TargetUnreachable as exc:
        print_error(f"the target is unreachable: {exc}")
        raise typer.Exit(ExitCode.UNREACHABLE) from None
    except (TargetRefused, JobError, source.SourceError) as exc:
        print_error(str(exc))
        raise typer.Exit(ExitCode.USAGE) from None
    except KeyboardInterrupt:  # before the run started (the run itself reports what it did)
        print_note("interrupted before any request was sent")
        raise typer.Exit(INTERRUPTED) from None
    document = outcome.document
    if not json_output:
        stdout_console().print(render_report(document), soft_wrap=False, highlight=False)
    _emit(document, json_output=json_output, output=output)
    if outcome.result.interrupted:
        print_note("interrupted: the report covers the requests that had finished")
        raise typer.Exit(INTERRUPTED)
    error_rate = float(document["results"]["error_rate"])
    if max_error_rate is not None and error_rate > max_error_rate:
        print_error(
            f"{error_rate:.2%} of the requests failed, above --max-error-rate {max_error_rate:.2%}"
        )
        raise typer.Exit(ExitCode.REFUSED)


def _progress_view(console: Console) -> ProgressFactory:
    def make(live: Live, expected: int | None, duration: float | None) -> ProgressView:
        return ProgressView(live, total=expected, duration=duration, console=console)

    return make
