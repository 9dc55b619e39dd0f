"""Run ``llmproxy ARGS`` as a base install would, without the drivers the extras install.

``python -m tests.packaging.without_drivers config check gw.yaml``: the interpreter is told that
asyncpg, aiomysql, PyMySQL, redis and hiredis do not exist (an import of one raises
ModuleNotFoundError, as it would in a venv without them), then the CLI runs. The slow wheel test
checks the same against a real base install; this one runs in a second.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from types import ModuleType

HIDDEN = frozenset({"asyncpg", "aiomysql", "pymysql", "redis", "hiredis"})


class _Absent(MetaPathFinder):
    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        if fullname.partition(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


def hide_drivers() -> None:
    """Make the drivers unimportable in this process (and forget any already imported)."""
    for name in list(sys.modules):
        if name.partition(".")[0] in HIDDEN:
            del sys.modules[name]
    sys.meta_path.insert(0, _Absent())


if __name__ == "__main__":
    hide_drivers()
    from llmproxy.cli.main import app

    app(sys.argv[1:], prog_name="llmproxy")
