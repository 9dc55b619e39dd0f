"""``python -m bench.ab A=DIR B=DIR``: two builds of the gateway side by side, same load, one core.

Runs between benchmark runs drift by 10-20 % on a shared machine, more than most changes
cost. This runs two checkouts (``git worktree add /tmp/before <rev>``) at the same time, pinned
to the same core and fed the same ``wrk`` load from another core, and reports each build's CPU
per request and their ratio per round: what the change costs, with the machine's drift
cancelled out. Needs ``wrk`` and ``taskset``; the mock backend runs on the load's core.

    python -m bench.ab before=/tmp/before after=. --stream --rounds 5

One checkout under two configs measures what a setting costs (``--set NAME:KEY=JSON``, any
number of times)::

    python -m bench.ab off=. on=. --full --stream --set off:usage.journal=false

``--api messages`` (or ``responses``) sends both builds that API's body on its path; with
``--apis NAME:chat_completions`` one build's backend speaks only chat completions, so the gateway
translates Messages for it and the ratio is what translation costs::

    python -m bench.ab pass=. trans=. --full --stream --api messages --apis trans:chat_completions

``--api NAME:API`` sends one build another API than the other: one checkout twice then compares
what two APIs cost in the same rounds (``chat=. msgs=. --api msgs:messages``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bodies import APIS, PATHS, Api
from bench.targets import ensure_tools, free_port, render_gateway_config, wait_ready
from bench.wrk import render_lua
from llmproxy.apis import CONFIG_NAMES

BACKEND_APIS = tuple(CONFIG_NAMES.values())
"""What ``backends[].apis`` accepts (the gateway's config spelling, not ``--api``'s)."""


def _cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and its children (a supervisor's workers)."""
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(proc.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _start(command: list[str], cpu: int, cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["taskset", "-c", str(cpu), *command],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _apply(config: dict[str, object], build: str, setting: str) -> None:
    """``NAME:dotted.key=JSON`` into ``config`` when NAME is ``build``."""
    name, _, assignment = setting.partition(":")
    if name != build:
        return
    key, _, text = assignment.partition("=")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text  # a bare string
    *parents, last = key.split(".")
    section = config
    for part in parents:
        child = section.setdefault(part, {})
        assert isinstance(child, dict), f"--set {setting}: {part} is not a section"
        section = child
    section[last] = value


def _apply_apis(config: dict[str, object], build: str, setting: str) -> None:
    """``NAME:API[,API...]`` into the first backend's ``apis`` when NAME is ``build``.

    Its own option because ``--set`` walks sections by name and cannot reach into the
    ``backends`` list. An unknown API name stops the run here rather than in the gateway's
    config check, which would only show as a build that never answers ``/health``.
    """
    name, _, names = setting.partition(":")
    if name != build:
        return
    apis = [api.strip() for api in names.split(",") if api.strip()]
    unknown = sorted(set(apis) - set(BACKEND_APIS))
    if unknown:
        raise ValueError(f"--apis {setting}: unknown {unknown}; choose from {BACKEND_APIS}")
    backends = config["backends"]
    assert isinstance(backends, list), "backends is not a list"
    assert backends, "the config has no backend"
    backends[0]["apis"] = apis


def build_apis(values: list[str], builds: list[str]) -> dict[str, Api]:
    """The API each build is sent, from ``--api`` values ``API`` (every build) or ``NAME:API``
    (that build; it wins over a plain ``API``, whatever the order). Chat by default.

    Per build, so that two APIs are compared in the same rounds on the same core: two runs of
    ``bench.ab`` differ by more than the APIs do. ValueError names a wrong value.
    """
    everyone: Api = "chat"
    chosen: dict[str, Api] = {}
    for value in values:
        name, _, text = value.rpartition(":")
        api = next((known for known in APIS if known == text), None)
        if api is None:
            raise ValueError(f"--api {value}: unknown API {text!r}; choose from {APIS}")
        if not name:
            everyone = api
        elif name in builds:
            chosen[name] = api
        else:
            raise ValueError(f"--api {value}: {name!r} is not one of the builds {builds}")
    return {build: chosen.get(build, everyone) for build in builds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("builds", nargs=2, help="NAME=DIR of a checkout, twice")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--stream", action="store_true", help="streamed requests (16 tokens)")
    parser.add_argument(
        "--full", action="store_true", help="usage records and metrics on (default: the core)"
    )
    parser.add_argument("--workers", type=int, default=1, help="server.workers of both builds")
    parser.add_argument(
        "--ttft",
        type=float,
        default=0.0,
        help="the mock's seconds to the first token (default 0: an instant backend)",
    )
    parser.add_argument(
        "--shared-state",
        action="store_true",
        help="a max_in_flight on the backend (with the per-key limits the bench always has): "
        "what several "
        "workers share",
    )
    parser.add_argument("--tokens", type=int, default=16, help="completion tokens per request")
    parser.add_argument(
        "--itl", type=float, default=0.0, help="the mock's seconds between tokens (default 0)"
    )
    parser.add_argument("--connections", type=int, default=32, help="wrk's connections per build")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME:KEY=JSON",
        help="a config value for one build, e.g. off:usage.journal=false (dotted key, JSON value)",
    )
    parser.add_argument(
        "--api",
        action="append",
        default=[],
        metavar="[NAME:]API",
        help=f"the model API ({', '.join(APIS)}; default chat) both builds are sent, its path "
        "and body; NAME:API for one build only",
    )
    parser.add_argument(
        "--apis",
        action="append",
        default=[],
        metavar="NAME:API[,API]",
        help="backends[0].apis of one build, e.g. trans:chat_completions (Messages translated)",
    )
    args = parser.parse_args()
    builds = dict(pair.split("=", 1) for pair in args.builds)
    try:
        apis = build_apis(args.api, list(builds))
    except ValueError as exc:
        parser.error(str(exc))
    for setting in args.apis:  # a typo fails now, not as a build that never comes up
        name = setting.partition(":")[0]
        if name not in builds:
            parser.error(f"--apis {setting}: {name!r} is not one of the builds {list(builds)}")
        try:
            _apply_apis({"backends": [{}]}, name, setting)
        except ValueError as exc:
            parser.error(str(exc))
    wrk, _ = ensure_tools(want_nginx=False)
    if wrk is None:
        sys.exit("bench.ab needs wrk")
    work = Path(tempfile.mkdtemp(prefix="llmproxy-ab-"))
    mock_port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    mock = _start(
        [
            sys.executable,
            "-m",
            "llmproxy",
            "mock-backend",
            "--port",
            str(mock_port),
            "--ttft",
            str(args.ttft),
            "--itl",
            str(args.itl),
        ],
        0,
        Path.cwd(),
        env,
    )
    scripts = {}
    for name, api in apis.items():
        scripts[name] = work / f"post-{name}.lua"
        scripts[name].write_text(render_lua(args.tokens, api, stream=args.stream))
    gateways: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        for name, directory in builds.items():
            port = free_port()
            config = work / f"{name}.yaml"
            rendered = json.loads(render_gateway_config(port, mock_port, core=not args.full))
            if args.full:  # each build's records in the scratch directory, not its checkout
                rendered["usage"] = {"database": str(work / f"{name}-usage.db")}
            # No shedding: both builds share one saturated core, and a build answering some
            # requests 503 at once would look cheaper per request than it is.
            rendered["server"] = {
                "workers": args.workers,
                "watch_config": False,
                "overload": {"enabled": False},
            }
            if args.shared_state:
                rendered["backends"][0]["max_in_flight"] = 10_000
            for setting in args.set:
                _apply(rendered, name, setting)
            for setting in args.apis:
                _apply_apis(rendered, name, setting)
            config.write_text(json.dumps(rendered, indent=2) + "\n")
            checkout = Path(directory).resolve()
            command = [sys.executable, "-m", "llmproxy", "serve", "--config", str(config)]
            gateways[name] = (
                _start(command, 1, checkout, {**env, "PYTHONPATH": str(checkout)}),
                port,
            )
        for process, port in gateways.values():
            wait_ready(process, port, Path(os.devnull))  # both pinned to one core: not instant
        time.sleep(2 * (args.workers > 1))
        cpu: dict[str, list[float]] = {name: [] for name in builds}
        for round_number in range(args.rounds + 1):
            before = {name: _cpu_seconds(p.pid) for name, (p, _) in gateways.items()}
            loads = {
                name: subprocess.Popen(
                    [
                        "taskset",
                        "-c",
                        "0",
                        wrk,
                        "-t1",
                        f"-c{args.connections}",
                        f"-d{args.seconds}s",
                        "-s",
                        str(scripts[name]),
                        f"http://127.0.0.1:{port}{PATHS[apis[name]]}",
                    ],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for name, (_, port) in gateways.items()
            }
            outputs = {name: load.communicate()[0] for name, load in loads.items()}
            if round_number == 0:
                continue  # warm-up
            for name, (process, _) in gateways.items():
                if "Non-2xx" in outputs[name]:
                    print(f"warning: {name} answered errors:\n{outputs[name]}", file=sys.stderr)
                found = re.search(r"(\d+) requests in", outputs[name])
                requests = int(found.group(1)) if found else 0
                used = _cpu_seconds(process.pid) - before[name]
                cpu[name].append(used / requests * 1e6 if requests else float("nan"))
    finally:
        for process, _ in gateways.values():
            process.send_signal(signal.SIGTERM)
            process.wait(15)
        mock.send_signal(signal.SIGTERM)
        mock.wait(15)
    first, second = builds
    for name, values in cpu.items():
        print(
            f"{name:>10}: CPU µs/request per round {[round(v) for v in values]}, "
            f"median {statistics.median(values):.0f}"
        )
    ratios = [b / a for a, b in zip(cpu[first], cpu[second], strict=True)]
    print(
        f"{second}/{first} per round {[round(r, 3) for r in ratios]}, "
        f"median {statistics.median(ratios):.3f}"
    )


if __name__ == "__main__":
    main()
