"""The accounts the service has held the execution role in: one item (`accounts`) holding a string set.

A worker adds an account the first time it assumes the role there (per process: `ADD` to a set is
idempotent, so a repeat costs a write and changes nothing). Only accounts where the role could be
assumed are noted, so a request naming a made-up account adds nothing. The forwarding audit reads the
item (one strongly consistent GetItem, never a scan of the records) when `AllowedAccountIds` is empty.
An item of about 30,000 accounts fits DynamoDB's 400 KB. It is in no index (it has none of their keys).
"""

from __future__ import annotations

import threading
from typing import Any

from shared.observability import logger
from shared.store.dynamo import key

KEY = "accounts"
_noted: set[str] = set()
_noted_lock = threading.Lock()


def note(client: Any, table: str, account_id: str) -> None:
    client.update_item(
        TableName=table,
        Key=key(KEY),
        UpdateExpression="ADD account_ids :account",
        ExpressionAttributeValues={":account": {"SS": [account_id]}},
    )


def known(client: Any, table: str) -> set[str]:
    item = client.get_item(TableName=table, Key=key(KEY), ConsistentRead=True).get("Item") or {}
    return set((item.get("account_ids") or {}).get("SS") or [])


def note_once(client: Any, table: str, account_id: str) -> None:
    """Note the account once per process, in a thread of its own: off the containment's path (a worker
    notes an account right after assuming the role there). A failed write is logged and tried again the
    next time the process assumes the role there."""
    with _noted_lock:
        if account_id in _noted:
            return
        _noted.add(account_id)

    def write() -> None:
        try:
            note(client, table, account_id)
        except Exception as exc:  # the audit misses the account until a later note succeeds
            with _noted_lock:
                _noted.discard(account_id)
            logger.warning(
                "account not noted for the forwarding audit",
                extra={"account_id": account_id, "problem": str(exc)},
            )

    threading.Thread(target=write, name="note-account", daemon=True).start()


def forget_noted() -> None:
    """Forget which accounts this process noted (tests, the local stack between runs)."""
    with _noted_lock:
        _noted.clear()
