"""Task inventories, streamed: a manifest file (JSON lines or CSV) or the live listing API.

Every source is a generator that yields one item at a time, so memory does not grow with the
inventory. An item is either a :class:`~worker.models.TaskInfo` or a :class:`Rejected` entry that
says which line was refused and why; a bad line never stops the lines after it.

:mod:`scheduler.inventory.manifest` reads manifests (its docstring states the rules),
:mod:`scheduler.inventory.live` the listing API, and :mod:`scheduler.inventory.items` holds
what both yield. :mod:`scheduler.inventory.shares` finds the shares to list when none are named.
"""

from __future__ import annotations

from scheduler.inventory.items import RAW_CHARS, STATUSES, TYPES, InventoryItem, Rejected, TargetStart, printable
from scheduler.inventory.live import TaskLister, read_live
from scheduler.inventory.manifest import (
    IGNORED_FIELDS,
    KNOWN_FIELDS,
    MAX_FIELD_CHARS,
    MAX_LINE_BYTES,
    OPTIONAL_FIELDS,
    REQUIRED_FIELDS,
    ManifestError,
    Rejection,
    read_manifest,
)
from scheduler.inventory.shares import (
    Discovery,
    ListingUnreadableError,
    ShareInfo,
    SkippedShare,
    discover,
    discover_shares,
    list_shares,
)

__all__ = [
    "IGNORED_FIELDS",
    "KNOWN_FIELDS",
    "MAX_FIELD_CHARS",
    "MAX_LINE_BYTES",
    "OPTIONAL_FIELDS",
    "RAW_CHARS",
    "REQUIRED_FIELDS",
    "STATUSES",
    "TYPES",
    "Discovery",
    "InventoryItem",
    "ListingUnreadableError",
    "ManifestError",
    "Rejected",
    "Rejection",
    "ShareInfo",
    "SkippedShare",
    "TargetStart",
    "TaskLister",
    "discover",
    "discover_shares",
    "list_shares",
    "printable",
    "read_live",
    "read_manifest",
]
