"""``python -m bench``: how much the gateway adds over a direct connection, next to nginx.

Starts the mock backend, the gateway in front of it and (when available) nginx as a reference
proxy, all on 127.0.0.1, then measures each scenario against each target in alternating order
over several rounds and reports medians. A report, not a test: it exits 0 even when a target is
missed, and says which ones were met.

    python -m bench                  # 4 scenarios × 4 targets × 3 rounds of 5 s, then decode
    python -m bench --quick                  # a smoke run of a few seconds
    python -m bench --scenarios single,stream16 --json out.json
    python -m bench --scenarios decode --streams 300,1000 --loop closed
    python -m bench --scenarios single,single-json --api chat,messages   # same rounds
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from bench import decode, report
from bench.bodies import APIS, parse_apis
from bench.runner import BACKGROUND_BUSY, SCENARIOS, Sample, Scenario, measure
from bench.stats import machine_busy_ticks, nan_to_null
from bench.targets import Target, ensure_tools, start_targets

RETRIES = 2
"""How many times a run disturbed by other processes is repeated (the least disturbed is kept)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    names = [scenario.name for scenario in SCENARIOS] + ["decode"]
    defaults = [scenario.name for scenario in SCENARIOS if scenario.default] + ["decode"]
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all targets (default 3)")
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s runs (smoke test)")
    parser.add_argument(
        "--scenarios",
        default=",".join(defaults),
        help=f"comma-separated subset of {','.join(names)} (default {','.join(defaults)})",
    )
    parser.add_argument(
        "--api",
        default="chat",
        help=f"comma-separated model APIs of {','.join(APIS)} (default chat): each scenario "
        "but decode runs on each, every target included, in the same rounds; a scenario on "
        "another API than chat is reported as NAME@API",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    parser.add_argument("--no-nginx", action="store_true", help="skip the nginx reference")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="gateway processes (server.workers) and nginx worker_processes (default 1)",
    )
    decoding = parser.add_argument_group("decode scenario (many streams at a decode speed)")
    decoding.add_argument(
        "--streams", default="300,600,1000", help="concurrency levels (default 300,600,1000)"
    )
    decoding.add_argument("--tokens", type=int, default=100, help="tokens per stream (100)")
    decoding.add_argument("--itl", type=float, default=0.05, help="seconds between tokens (0.05)")
    decoding.add_argument(
        "--decode-duration", type=float, default=10.0, help="measured seconds per run (10)"
    )
    decoding.add_argument(
        "--loop",
        choices=("open", "closed"),
        default="open",
        help="open: evenly spread arrivals; closed: all streams start together, again and again",
    )
    args = parser.parse_args(argv)
    unknown = set(args.scenarios.split(",")) - set(names)
    if unknown:
        parser.error(f"--scenarios: unknown {', '.join(sorted(unknown))}; choose from {names}")
    try:
        args.apis = parse_apis(args.api)
    except ValueError as exc:
        parser.error(f"--api: {exc}")
    if args.quick:
        args.duration, args.rounds = 1.0, 1
        args.streams, args.tokens, args.itl, args.decode_duration = "50", 20, 0.02, 1.0
    args.decode = decode.DecodeSettings(
        streams=tuple(int(n) for n in args.streams.split(",")),
        tokens=args.tokens,
        itl=args.itl,
        duration=args.decode_duration,
        loop=args.loop,
    )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Wide enough for the results table even when the output goes to a file or a CI log.
    console = Console(width=None if sys.stdout.isatty() else 170)
    wrk, nginx = ensure_tools(want_nginx=not args.no_nginx)
    env = report.environment(wrk, nginx)
    env["other_load_cores"] = round(_other_load(), 2)
    console.print("[bold]llmproxy overhead benchmark[/]")
    console.print("  " + "  ".join(f"{key}={value}" for key, value in env.items()))
    if env["other_load_cores"] > BACKGROUND_BUSY:
        console.print(
            f"[yellow]warning:[/] other processes already use {env['other_load_cores']} cores; "
            "results will be noisy (see the 'others' column)"
        )
    if not wrk:
        console.print("[yellow]wrk missing: non-streaming is measured with the Python generator[/]")
    chosen = [s for s in SCENARIOS if s.name in args.scenarios.split(",")]
    samples: list[Sample] = []
    decode_runs: list[decode.DecodeRun] = []
    with tempfile.TemporaryDirectory(prefix="llmproxy-bench-") as tmp:
        workdir = Path(tmp)
        with start_targets(workdir, nginx, args.workers) as targets:
            console.print("  targets: " + ", ".join(f"{t.name} {t.url}" for t in targets))
            for scenario in chosen:
                variants = [scenario.on(api) for api in args.apis]
                for variant in variants:
                    console.print(f"[bold]{variant.name}[/]: {variant.title}")
                samples += _run_rounds(console, variants, targets, workdir, wrk, args)
            if "decode" in args.scenarios.split(","):
                console.print("[bold]decode[/]: many streams at a decode speed, one run each")
                if args.apis != ("chat",):
                    console.print("  (chat completions only: --api does not apply to decode)")
                decode_runs = decode.run_all(console, targets, args.decode)
    summary = report.summarize(samples)
    added = report.overhead(summary)
    decode_rows = decode.summarize(decode_runs, args.decode)
    checks = report.verdicts(summary, added, decode_rows)
    if samples:
        report.print_report(console, summary, added, checks, args.rounds)
    if decode_rows:
        decode.print_table(console, decode_rows, args.decode)
    report.print_verdicts(console, checks)
    if args.json:
        document = {
            "environment": env,
            "settings": {
                key: value
                for key, value in vars(args).items()
                if key not in ("json", "decode", "apis")
            },
            "summary": summary,
            "overhead": added,
            "decode": decode_rows,
            "decode_runs": [dataclasses.asdict(run) for run in decode_runs],
            "targets": checks,
            "runs": [dataclasses.asdict(sample) for sample in samples],
        }
        args.json.write_text(json.dumps(nan_to_null(document), indent=2, default=str) + "\n")
        console.print(f"results written to {args.json}")
    return 0


def _run_rounds(
    console: Console,
    variants: list[Scenario],
    targets: list[Target],
    workdir: Path,
    wrk: str | None,
    args: argparse.Namespace,
) -> list[Sample]:
    """A warm-up run per target, then ``args.rounds`` rounds over all targets in rotating order.

    ``variants`` are one scenario on each ``--api``: their runs are interleaved in the same
    rounds, so the machine's drift over a run falls on every API alike and their added latency
    can be compared with each other, not only with direct's.
    """
    mock_pid = targets[0].pid
    units = [(variant, target) for variant in variants for target in targets]
    width = 8 if len(variants) == 1 else 8 + 1 + max(len(v.api) for v in variants)

    def run(unit: tuple[Scenario, Target], duration: float, round_no: int) -> Sample:
        return measure(
            unit[0], unit[1], mock_pid, duration=duration, round_no=round_no, wrk=wrk,
            workdir=workdir,
        )  # fmt: skip

    def label(unit: tuple[Scenario, Target]) -> str:
        return unit[1].name if len(variants) == 1 else f"{unit[1].name}@{unit[0].api}"

    for unit in units:  # fill the connection pools, fault in the code paths
        run(unit, min(1.0, args.duration), round_no=0)
    samples = []
    for round_no in range(1, args.rounds + 1):
        shift = (round_no - 1) % len(units)  # no target always runs first (or after another)
        for unit in units[shift:] + units[:shift]:
            sample = run(unit, args.duration, round_no)
            for _ in range(RETRIES):  # the machine is shared: redo a run other load disturbed
                if sample.background_cpu <= BACKGROUND_BUSY:
                    break
                console.print(
                    f"  round {round_no}  {label(unit):{width}} disturbed by other processes "
                    f"({sample.background_cpu:.2f} cores); running it again"
                )
                again = run(unit, args.duration, round_no)
                sample = min(sample, again, key=lambda s: s.background_cpu)
            samples.append(sample)
            console.print(
                f"  round {round_no}  {label(unit):{width}} {sample.rps:8,.0f} req/s  "
                f"p50 {sample.p50_ms:7.2f} ms  p99 {sample.p99_ms:7.2f} ms  "
                f"CPU/req {sample.cpu_ms_per_req:.3f} ms  {', '.join(sample.warnings())}"
            )
    return samples


def _other_load(seconds: float = 1.0) -> float:
    """Cores busy while the bench itself is idle: load from other processes on the machine."""
    busy0, total0 = machine_busy_ticks()
    time.sleep(seconds)
    busy, total = machine_busy_ticks()
    return (busy - busy0) / (total - total0) * (os.cpu_count() or 1) if total > total0 else 0.0


if __name__ == "__main__":
    sys.exit(main())
