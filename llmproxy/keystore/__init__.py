"""The builtin key store: the keys llmproxy issues and manages itself, in a SQLite file or in a
PostgreSQL database that replicas share (:mod:`llmproxy.keystore.access` picks one).

Operators manage it with ``llmproxy keys add/list/show/revoke/update`` and ``llmproxy teams
add/list/show/update/remove`` (through the admin socket);
the gateway reads it through the ``builtin`` auth provider, which keeps every key in memory. Only a
key's SHA-256 and display prefix are stored, never the secret.
"""

from llmproxy.keyfields import SETTABLE_FIELDS, STATUSES, KeyStatus
from llmproxy.keystore.errors import KeyNotFound, KeyStoreError, TeamConflict, TeamNotFound
from llmproxy.keystore.record import KeyRecord, new_key_id
from llmproxy.keystore.schema import SCHEMA_VERSION
from llmproxy.keystore.store import KeyStore

__all__ = [
    "SCHEMA_VERSION",
    "SETTABLE_FIELDS",
    "STATUSES",
    "KeyNotFound",
    "KeyRecord",
    "KeyStatus",
    "KeyStore",
    "KeyStoreError",
    "TeamConflict",
    "TeamNotFound",
    "new_key_id",
]
