"""What every inventory source yields: a task, or a :class:`Rejected` entry for a refused line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from worker.models import TaskInfo, TaskStatus, TaskType

RAW_CHARS: Final = 200

#: The values a task's ``status`` and ``type`` may take; any other refuses its line (or listed task).
STATUSES: Final = tuple(s.value for s in TaskStatus)
TYPES: Final = tuple(t.value for t in TaskType)
# Control characters are shown as \xNN so a stored or printed reject cannot drive a terminal.
_CONTROL: Final = {code: f"\\x{code:02x}" for code in (*range(32), 127)}


@dataclass(frozen=True, slots=True)
class Rejected:
    """A line (or listed task) that was refused. ``reason`` has no line prefix: see ``str()``."""

    source: str
    line: int
    reason: str
    raw: str

    def __str__(self) -> str:
        return f"{self.source}: line {self.line}: {self.reason}"


InventoryItem = TaskInfo | Rejected


@dataclass(frozen=True, slots=True)
class TargetStart:
    """Not a task: the items after it (to the next one) are the named target's (a targets file).

    ``info`` is what may be shown and stored of the target (never a credential).
    """

    name: str
    project_id: str
    info: dict[str, object]


def printable(data: bytes | str, limit: int = RAW_CHARS) -> str:
    """Untrusted input as bounded, printable ASCII: non-ASCII and control characters escaped."""
    head = data[:limit]
    text = head.decode("utf-8", "backslashreplace") if isinstance(head, bytes) else head
    shown = text.translate(_CONTROL).encode("ascii", "backslashreplace").decode("ascii")
    if len(data) > limit or len(shown) > limit:
        shown = shown[: limit - 3] + "..."
    return shown
