"""The audit's hash chain: every attempt line and final outcome of a batch, in write order.

Each plan batch has one chain. An entry's hash covers its content and the previous hash:
``head' = HMAC-SHA256(key, head || entry)`` with ``SFS_CLEANUP_AUDIT_KEY`` set, else
``SHA-256(head || entry)``. The client computes the next head; the Lua script that writes the
record compare-and-sets the batch's chain state (``head:count`` in ``P:run:{R}:chain``) in the
same atomic step, and answers the current state when another writer moved it first, so the
client recomputes and tries again.

Nothing per entry but its position is stored: each record carries its sequence number (``"q"``
at the end of its JSON), which is what recovers the order. An intent line (``"v":"sending"``) is
an entry ``I`` covering the task and the attempt's key (``d2``): all that its completion, which
overwrites the line in place, still holds; the completion keeps the intent's position as
``"qi"`` and is an entry ``A`` of its own. An entry is ``seq US task US kind US sha256(body)`` where
the body is the record's JSON as the client wrote it (without ``q``/``qi``).

Without a key the chain proves order and completeness against mistakes, not against someone who
can write Redis: such a writer can recompute an unkeyed chain. With a key, only its holders can.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final

SEP: Final = "\x1f"
INTENT: Final = "I"
ATTEMPT: Final = "A"
FINAL: Final = "F"
_TAIL = re.compile(r',"q":(\d+)(?:,"qi":(\d+))?\}$')
_KEY = re.compile(r'^\{"k":"([^"]+)"')
_SENDING = '"v":"sending"'
_MASKED = '{"masked":"'


@dataclass(frozen=True, slots=True)
class ChainState:
    """A batch's chain as stored: its head (hex) and number of entries."""

    head: str
    count: int

    def encode(self) -> str:
        return f"{self.head}:{self.count}"

    @classmethod
    def decode(cls, value: str | None) -> ChainState | None:
        if not value:
            return None
        head, _, count = value.rpartition(":")
        return cls(head, int(count))


class Chain:
    """The hash function of one deployment's chains: keyed (HMAC-SHA256) or plain SHA-256."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or None

    @property
    def keyed(self) -> bool:
        return self._key is not None

    def _digest(self, data: bytes) -> bytes:
        if self._key is None:
            return hashlib.sha256(data).digest()
        return hmac.digest(self._key, data, "sha256")  # the one-shot C path: on every ledger write

    def genesis(self, run_id: str, batch: int) -> ChainState:
        """The state before a batch's first entry: bound to its run and batch, so records moved
        to another batch or run do not verify there."""
        return ChainState(self._digest(f"sfs-chain/1{SEP}{run_id}{SEP}{batch}".encode()).hex(), 0)

    def step(self, state: ChainState, task_id: str, kind: str, body: str) -> ChainState:
        seq = state.count + 1
        entry = f"{seq}{SEP}{task_id}{SEP}{kind}{SEP}{body_digest(body)}".encode()
        return ChainState(self._digest(bytes.fromhex(state.head) + entry).hex(), seq)

    def run_head(self, run_id: str, heads: Iterable[tuple[int, ChainState]]) -> str:
        """The run's head: over every batch's head and count, in batch order."""
        parts = [f"sfs-run/1{SEP}{run_id}"] + [f"{n}{SEP}{s.head}{SEP}{s.count}" for n, s in sorted(heads)]
        return self._digest("\n".join(parts).encode()).hex()


def body_digest(body: str) -> str:
    """What an entry holds of its record: the SHA-256 of its JSON, which an evidence bundle can
    carry in place of a record that had to be masked (an API message echoing a secret)."""
    if body.startswith(_MASKED):
        return body[len(_MASKED) : len(_MASKED) + 64]
    return hashlib.sha256(body.encode()).hexdigest()


def masked(stored: str) -> str:
    """A stored record replaced by its digest, its chain positions kept (see :func:`body_digest`)."""
    body, seq, intent_seq = split_seq(stored)
    digest = f'{_MASKED}{body_digest(body)}"}}'
    return with_seq(digest, seq, intent_seq) if seq is not None else digest


def is_masked(body: str) -> bool:
    return body.startswith(_MASKED)


def with_seq(body: str, seq: int, intent_seq: int | None = None) -> str:
    """The stored form of a record: its JSON with its position appended (as ``record.lua`` does)."""
    tail = f',"q":{seq}' + (f',"qi":{intent_seq}' if intent_seq is not None else "")
    return body[:-1] + tail + "}"


def split_seq(stored: str) -> tuple[str, int | None, int | None]:
    """``(body, seq, intent seq)`` of a stored record; ``seq`` is None for a record without one."""
    match = _TAIL.search(stored)
    if match is None:
        return stored, None, None
    body = stored[: match.start()] + "}"
    return body, int(match[1]), int(match[2]) if match[2] else None


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int | None
    task_id: str
    kind: str
    body: str


def entries(finals: Mapping[str, str], attempts: Mapping[str, str]) -> Iterator[Entry]:
    """Every chain entry the stored records of one batch hold (unordered)."""
    for task_id, stored in finals.items():
        body, seq, _ = split_seq(stored)
        yield Entry(seq, task_id, FINAL, body)
    for task_id, value in attempts.items():
        for line in value.split("\n"):
            if not line:
                continue
            body, seq, intent_seq = split_seq(line)
            key = _KEY.match(body)
            if intent_seq is not None:
                yield Entry(intent_seq, task_id, INTENT, key[1] if key else "")
                yield Entry(seq, task_id, ATTEMPT, body)
            elif _SENDING in body:
                yield Entry(seq, task_id, INTENT, key[1] if key else "")
            else:
                yield Entry(seq, task_id, ATTEMPT, body)


@dataclass(frozen=True, slots=True)
class BatchCheck:
    """What recomputing one batch's chain found: None when sound, else the first broken link."""

    state: ChainState
    problem: str | None


def check_batch(
    chain: Chain,
    run_id: str,
    batch: int,
    finals: Mapping[str, str],
    attempts: Mapping[str, str],
    stored: ChainState | None,
    *,
    heads: bool = True,
) -> BatchCheck:
    """Recompute a batch's chain from its records and compare it with the stored state.

    ``heads=False`` (a keyed chain checked without its key) checks positions and counts only.
    """
    found = list(entries(finals, attempts))
    state = chain.genesis(run_id, batch)
    where = f"batch {batch}"
    if not found:
        if stored is not None and stored.count:
            return BatchCheck(state, f"{where}: the chain has {stored.count} entries but no record is left (removed)")
        return BatchCheck(state, None)
    if stored is None:
        return BatchCheck(state, f"{where}: {len(found)} records but no chain state (inserted, or the chain removed)")
    unnumbered = [e for e in found if e.seq is None]
    if unnumbered:
        e = unnumbered[0]
        return BatchCheck(state, f"{where}, task {e.task_id}: a record with no chain position (inserted or edited)")
    by_seq: dict[int, Entry] = {}
    for e in found:
        assert e.seq is not None
        if e.seq in by_seq:
            return BatchCheck(state, f"{where}, task {e.task_id}: two records hold chain position {e.seq} (inserted)")
        by_seq[e.seq] = e
    for seq in range(1, len(found) + 1):
        e_at = by_seq.get(seq)
        if e_at is None:
            return BatchCheck(state, f"{where}: no record at chain position {seq} (removed or renumbered)")
        state = chain.step(state, e_at.task_id, e_at.kind, e_at.body)
    if state.count != stored.count:
        return BatchCheck(
            state, f"{where}: {state.count} records but the chain counts {stored.count} (removed or inserted)"
        )
    if heads and state.head != stored.head:
        return BatchCheck(
            state,
            f"{where}: the records do not hash to the chain's head (a record edited, swapped or reordered, "
            "or the chain rebuilt without the key)",
        )
    return BatchCheck(state, None)
