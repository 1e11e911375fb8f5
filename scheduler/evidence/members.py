"""The evidence bundle's layout: its member names, the manifest's format, and its digest.

A bundle is a zip archive. Zip, not tar.gz, because a zip member can be written as a stream of
unknown length (a tar header needs the size first, so 100,000 rows would go through a temporary
file), a reader can open one member without decompressing the others, and a compliance team on
any desktop opens it with a double click.

``MANIFEST`` lists every other member but ``MANIFEST.sha256``, sorted by name, one line each::

    <sha256 hex>  <size in bytes>  <name>

The bundle's digest is the SHA-256 of the ``MANIFEST`` bytes: it covers every member through
their hashes, so that one value, written in a ticket, pins the whole bundle. ``MANIFEST.sha256``
holds it inside the bundle, which catches an edit of the manifest that forgot it; only the digest
kept outside (the ticket, and later the run's hash chain) proves nobody rewrote both.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Final

FORMAT: Final = "sfs-cleanup-evidence/2"
#: The format before the hash chain (no ``chain.jsonl``): still verified.
FORMAT_1: Final = "sfs-cleanup-evidence/1"

MANIFEST: Final = "MANIFEST"
MANIFEST_DIGEST: Final = "MANIFEST.sha256"
BUNDLE: Final = "bundle.json"  # format, run, tool version, who and when, completeness, chain head
REPORT: Final = "report.json"  # the run report, as `runs show --json`
TASKS: Final = "tasks.jsonl"  # one row per planned task: the export's row plus every attempt in full
REFUSED: Final = "refused.jsonl"  # one row per refused input line (the export's row, plus its source)
RATE: Final = "rate.json"  # requests per second over the run, 429s, retries
POLICY: Final = "policy.json"  # the policy the run applied, its fingerprint, its files' digests
SETTINGS: Final = "settings.json"  # the non-secret selection settings and their SHA-256
#: One line per batch: its records as stored (chain positions included) and its chain's head and
#: count, so the hash chain is recomputed offline. Bundles made before the chain have none.
CHAIN: Final = "chain.jsonl"

#: Every member a bundle of this format has, besides the manifest and its digest.
MEMBERS: Final = (BUNDLE, CHAIN, POLICY, RATE, REFUSED, REPORT, SETTINGS, TASKS)
#: The members every bundle has, of either format.
REQUIRED: Final = tuple(n for n in MEMBERS if n != CHAIN)

_LINE = re.compile(r"^([0-9a-f]{64})  (\d+)  (\S+)$")


@dataclass(frozen=True, slots=True)
class Entry:
    """One member as the manifest lists it."""

    name: str
    size: int
    sha256: str


class ManifestError(ValueError):
    """A manifest that cannot be read as this format."""


def render_manifest(entries: list[Entry]) -> bytes:
    return "".join(f"{e.sha256}  {e.size}  {e.name}\n" for e in sorted(entries, key=lambda e: e.name)).encode()


def parse_manifest(data: bytes) -> list[Entry]:
    entries: list[Entry] = []
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise ManifestError("MANIFEST is not ASCII text") from exc
    for number, line in enumerate(text.splitlines(), 1):
        match = _LINE.match(line)
        if match is None:
            raise ManifestError(f"MANIFEST line {number} is not '<sha256>  <size>  <name>': {line[:80]!r}")
        entries.append(Entry(match[3], int(match[2]), match[1]))
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ManifestError("MANIFEST lists a member twice")
    return entries


def digest(manifest: bytes) -> str:
    """The bundle's digest: the SHA-256 of its manifest."""
    return hashlib.sha256(manifest).hexdigest()
