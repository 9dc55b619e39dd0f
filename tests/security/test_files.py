"""Files the gateway writes are private: 0600 files in 0700 directories it creates."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from tests.security.daemon import base_config, capture_backend, daemon, free_port, until
from tests.security.wire import http_request


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_usage_store_recordings_and_run_directory_are_private(tmp_path: Path) -> None:
    """After a request: the usage database (and its WAL), the recording file, the key store and
    the admin socket's run directory are owner-only, whatever the umask."""
    from llmproxy.keystore import KeyStore

    with KeyStore(tmp_path / "data" / "keys.db") as store:
        secret, _ = store.add(name="files", user_id="files")
    with capture_backend() as backend:
        config = base_config(
            backend.url,
            free_port(),
            usage={"database": "data/usage.db"},
            record={"enabled": True, "path": "data/recordings/traffic.jsonl"},
            admin={"enabled": True, "socket": "run/admin.sock"},
            auth={"enabled": True, "storage": "builtin", "builtin_db": "data/keys.db"},
        )
        with daemon(tmp_path, config) as running:
            body = json.dumps({"model": "m", "messages": []}).encode()
            answer = running.request(
                http_request(
                    "POST",
                    b"/v1/chat/completions",
                    body,
                    {"authorization": f"Bearer {secret}"},
                )
            )
            assert answer.status == 200
            files = [
                tmp_path / "data" / "usage.db",
                tmp_path / "data" / "keys.db",
                tmp_path / "data" / "recordings" / "traffic.jsonl",
            ]
            assert until(lambda: all(path.exists() for path in files), 5), files
            for path in files:
                assert _mode(path) == 0o600, path
            for extra in (tmp_path / "data").glob("*.db-*"):
                assert _mode(extra) == 0o600, extra
            for directory in (
                tmp_path / "data",
                tmp_path / "data" / "recordings",
                tmp_path / "run",
            ):
                assert _mode(directory) == 0o700, directory
