"""The key store's tables, versioned with ``PRAGMA user_version``.

Each entry of ``_MIGRATIONS`` moves the schema one version up; :func:`migrate` applies the missing
ones in one write transaction, so two processes opening a new file at once cannot both create it.
Append a migration to change the schema — never edit one that has shipped.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Final

from llmproxy.keystore.errors import KeyStoreError

_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # 1: the keys table. Timestamps are Unix seconds (REAL); lists and metadata are JSON text.
    (
        """
        CREATE TABLE keys (
            id TEXT NOT NULL PRIMARY KEY,
            sha256 TEXT NOT NULL UNIQUE CHECK (length(sha256) = 64),
            prefix TEXT NOT NULL,
            name TEXT NOT NULL DEFAULT '',
            user_id TEXT NOT NULL DEFAULT '',
            status TEXT NOT NULL DEFAULT 'active',
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            expires_at REAL,
            revoked_at REAL,
            models TEXT NOT NULL DEFAULT '[]',
            allowed_ips TEXT NOT NULL DEFAULT '[]',
            total_quota INTEGER,
            used_quota INTEGER NOT NULL DEFAULT 0,
            rpm INTEGER,
            tpm INTEGER,
            max_concurrent INTEGER,
            priority INTEGER,
            metadata TEXT NOT NULL DEFAULT '{}'
        )
        """,
        "CREATE INDEX keys_user_id ON keys (user_id)",
    ),
    # 2: teams (llmproxy.teamfields), and a key's team and own budget. A team's name is its
    #    key (case-sensitive); a key's team is '' for none.
    (
        "ALTER TABLE keys ADD COLUMN team TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE keys ADD COLUMN budget REAL",
        "ALTER TABLE keys ADD COLUMN budget_period TEXT NOT NULL DEFAULT 'monthly'",
        "CREATE INDEX keys_team ON keys (team)",
        """
        CREATE TABLE teams (
            name TEXT NOT NULL PRIMARY KEY,
            description TEXT NOT NULL DEFAULT '',
            budget REAL,
            period TEXT NOT NULL DEFAULT 'monthly',
            rpm INTEGER,
            tpm INTEGER,
            max_concurrent INTEGER,
            total_quota INTEGER,
            used_quota INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )
        """,
    ),
    # 3: a key's own burst (the size of its request bucket; NULL: the rate's own).
    ("ALTER TABLE keys ADD COLUMN burst INTEGER",),
)
SCHEMA_VERSION: Final = len(_MIGRATIONS)


def migrate(connection: sqlite3.Connection, path: Path) -> int:
    """Bring the database at ``path`` to :data:`SCHEMA_VERSION`; returns the version found.

    ``connection`` must be in autocommit mode (``isolation_level=None``).
    """
    connection.execute("BEGIN IMMEDIATE")
    try:
        (found,) = connection.execute("PRAGMA user_version").fetchone()
        if found > SCHEMA_VERSION:
            raise KeyStoreError(
                f"{path}: key store schema version {found} is newer than this llmproxy "
                f"understands ({SCHEMA_VERSION}); upgrade llmproxy"
            )
        for version in range(found + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[version - 1]:
                connection.execute(statement)
            # user_version lives in the file header and is part of this transaction.
            connection.execute(f"PRAGMA user_version = {version:d}")
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    return int(found)
