"""The version of the Redis key layout, checked when a process starts.

A release that changes what the keys hold (a new field, a new encoding) raises
:data:`LAYOUT_VERSION`. The first process of a fleet to start writes it into Redis
(``{prefix}:layout``); every later process checks it, and one built for another layout refuses to
start instead of reading or writing records it does not understand. A mixed fleet in the middle
of a rolling upgrade across such a change is therefore stopped at its first new process, with a
line that says what to do (``docs/operations.md``, "Upgrading").
"""

from __future__ import annotations

from typing import Final

import redis

from worker.errors import UsageError
from worker.ledger.keys import Keys

#: 1: the layout before write-ahead records; 2: attempt lines keyed (``"k":"d2"``), write-ahead
#: intents, refused-line tokens, the active-run index, fleet API metrics and worker heartbeats;
#: 3: every record carries its hash-chain position ("q"), batches compacted when a run ends.
LAYOUT_VERSION: Final = 3


class LayoutMismatchError(UsageError):
    """Redis holds a key layout of another version than this release's."""


def check_layout(client: redis.Redis, keys: Keys) -> int:
    """Claim the layout for this release on an empty Redis, or check the one already claimed.

    Returns the version found (or written). Raises :class:`LayoutMismatchError` on a mismatch.
    """
    client.set(keys.layout, LAYOUT_VERSION, nx=True)
    raw = client.get(keys.layout)
    found = int(raw) if raw is not None else LAYOUT_VERSION
    if found != LAYOUT_VERSION:
        raise LayoutMismatchError(
            f"Redis holds key layout {found} under the prefix {keys.prefix!r}, and this release uses "
            f"layout {LAYOUT_VERSION}: finish or cancel the runs of the old release, then follow "
            "docs/operations.md, 'Upgrading' (or use a new SFS_CLEANUP_KEY_PREFIX)"
        )
    return found
