"""The real daemon, started as operators start it, in front of a real mock backend process."""

from __future__ import annotations

import signal
import subprocess
import textwrap
from pathlib import Path

import httpx
import openai

from llmproxy.apikey import has_valid_checksum
from tests.e2e.daemon import LLMPROXY, free_port, running


def _write_config(tmp_path: Path, listen_port: int, backend_port: int, **extra: str) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            listen: "127.0.0.1:{listen_port}"
            backends:
              - url: "http://127.0.0.1:${{BACKEND_PORT:-{backend_port}}}"
                models: ["mock-model"]
            health_check:
              interval: 1s
            """
        )
        + "".join(f"{line}\n" for line in extra.values())
    )
    return config


def test_serve_with_a_config_file_answers_openai_clients(tmp_path: Path) -> None:
    """`llmproxy serve --config` proxies to the backend and exits 0 on SIGTERM."""
    backend_port, gateway_port = free_port(), free_port()
    config = _write_config(tmp_path, gateway_port, backend_port)
    backend_args = ["mock-backend", "--port", str(backend_port), "--tokens", "4"]
    with (
        running(backend_args, f"http://127.0.0.1:{backend_port}/health"),
        running(
            ["serve", "--config", str(config)], f"http://127.0.0.1:{gateway_port}/health"
        ) as gateway,
    ):
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{gateway_port}/v1", api_key="sk-x", max_retries=0
        )
        reply = client.chat.completions.create(model="mock-model", messages=[])
        assert reply.usage is not None
        assert reply.usage.completion_tokens == 4
        stream = client.chat.completions.create(model="mock-model", messages=[], stream=True)
        assert len([chunk for chunk in stream if chunk.choices]) == 4
        assert httpx.get(f"http://127.0.0.1:{gateway_port}/ready").status_code == 200
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(timeout=15) == 0


def test_demo_answers_at_once(tmp_path: Path) -> None:
    """`llmproxy serve --demo` brings its own mock backend and answers chat requests."""
    port, mock_port = free_port(), free_port()
    args = ["serve", "--demo", "--listen", f"127.0.0.1:{port}", "--mock-port", str(mock_port)]
    with running(args, f"http://127.0.0.1:{port}/health", cwd=tmp_path) as demo:
        key = _printed_key(demo)
        assert (tmp_path / "run" / "llmproxy-demo-keys.db").exists()
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 401
        auth = {"Authorization": f"Bearer {key}"}
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers=auth).json()
        assert [m["id"] for m in models["data"]] == ["mock-model"]
        reply = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]},
            headers=auth,
        )
        assert reply.status_code == 200
        assert reply.json()["choices"][0]["message"]["content"]


def _printed_key(process: subprocess.Popen[bytes]) -> str:
    """The demo key from the banner (`export LLMPROXY_KEY=...`)."""
    assert process.stdout is not None
    for _ in range(50):
        line = process.stdout.readline().decode()
        if "LLMPROXY_KEY=" in line:
            key = line.split("LLMPROXY_KEY=", 1)[1].strip()
            assert has_valid_checksum(key)
            return key
    raise AssertionError("the demo printed no key")


def test_two_workers_share_one_port(tmp_path: Path) -> None:
    """With server.workers: 2 both processes serve the same port and all stop on SIGTERM."""
    backend_port, gateway_port = free_port(), free_port()
    config = _write_config(tmp_path, gateway_port, backend_port, workers="server: {workers: 2}")
    with (
        running(
            ["mock-backend", "--port", str(backend_port)], f"http://127.0.0.1:{backend_port}/health"
        ),
        running(
            ["serve", "--config", str(config)], f"http://127.0.0.1:{gateway_port}/health"
        ) as supervisor,
    ):
        for _ in range(20):
            with httpx.Client() as client:  # new connections, spread over the workers
                reply = client.post(
                    f"http://127.0.0.1:{gateway_port}/v1/chat/completions",
                    json={"model": "mock-model", "messages": []},
                )
                assert reply.status_code == 200
        children = subprocess.run(
            ["pgrep", "-P", str(supervisor.pid)], capture_output=True, text=True, check=False
        ).stdout.split()
        assert len(children) >= 2
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=20) == 0


def test_serve_refuses_a_broken_config(tmp_path: Path) -> None:
    """A config with a typo is refused with file:line and a suggestion; nothing starts."""
    config = tmp_path / "config.yaml"
    config.write_text('listen: ":0"\nbackends:\n  - url: "http://127.0.0.1:1"\n    wieght: 3\n')
    result = subprocess.run(
        [*LLMPROXY, "serve", "--config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert f"{config}:4: backends[0]: unknown key 'wieght' (did you mean 'weight'?)" in (
        result.stderr.splitlines()
    )


def test_serve_without_config_says_what_to_do(tmp_path: Path) -> None:
    """Without a config file the error names --config and --demo."""
    result = subprocess.run(
        [*LLMPROXY, "serve"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "--config" in result.stderr
    assert "--demo" in result.stderr


def test_serve_refuses_a_broken_lua_script(tmp_path: Path) -> None:
    """A Lua syntax error in a script file is refused at start with the file and line."""
    (tmp_path / "decide.lua").write_text("if data.balance > 0 then\n  return true\n")
    config = tmp_path / "config.yaml"
    config.write_text(
        'listen: ":0"\nbackends: [{url: "http://127.0.0.1:1"}]\n'
        "auth:\n  enabled: true\n  pipeline:\n"
        "    - {name: inline, type: static, keys: [{key: sk-a}], lua_script_file: decide.lua}\n"
    )
    result = subprocess.run(
        [*LLMPROXY, "serve", "--config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert f"{tmp_path / 'decide.lua'}:" in result.stderr
    assert "Traceback" not in result.stderr
