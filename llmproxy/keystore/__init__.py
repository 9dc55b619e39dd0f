"""The builtin key store: the SQLite file of keys llmproxy issues and manages itself.

Operators manage it with ``llmproxy keys add/list/show/revoke/update`` (through the admin socket);
the gateway reads it through the ``builtin`` auth provider, which keeps every key in memory. Only a
key's SHA-256 and display prefix are stored, never the secret.
"""

from llmproxy.keyfields import SETTABLE_FIELDS, STATUSES, KeyStatus
from llmproxy.keystore.errors import KeyNotFound, KeyStoreError
from llmproxy.keystore.record import KeyRecord
from llmproxy.keystore.schema import SCHEMA_VERSION
from llmproxy.keystore.store import KeyStore, new_key_id

__all__ = [
    "SCHEMA_VERSION",
    "SETTABLE_FIELDS",
    "STATUSES",
    "KeyNotFound",
    "KeyRecord",
    "KeyStatus",
    "KeyStore",
    "KeyStoreError",
    "new_key_id",
]
