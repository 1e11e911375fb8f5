"""Share discovery: the project's SFS Turbo file systems, listed and selected (:func:`discover`).

``GET /v1/{project_id}/sfs-turbo/shares/detail`` answers ``{"shares": [...], "count": N}``.
Whether ``count`` is the total or the page size is not confirmed, so pages are asked with
``offset += limit`` until a short or empty page, as for the task listing. A server that ignores
``offset`` (the same page again and again) is caught by the IDs repeating, and refused rather
than listed forever.

Selection, in this order: a share whose ``status`` is not ``200`` (ACTIVE) is skipped with its
reason (a frozen or half-created file system has no tasks worth listing, and its calls fail);
then its name must match the glob, and, when one is set, its ``enterprise_project_id`` must be
the one configured. Skipped shares are reported by ID with their reason; shares that merely do
not match are counted. A listing that cannot be read (not JSON, ``shares`` not a list) is an
error: when unsure which shares exist, nothing is purged.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Final, Protocol

from scheduler.inventory.items import printable
from worker.api.answers import ApiAnswer, Verdict
from worker.api.client import ApiError, CredentialsRefusedError, SfsTurboClient
from worker.errors import UnavailableError
from worker.ids import explain, show_value
from worker.ratelimit import RateLimitWaitTooLong
from worker.settings import Settings

#: The one status whose file system is usable (the reference's status codes).
AVAILABLE: Final = "200"
STATUS_NAMES: Final = {
    "100": "CREATING",
    "200": "ACTIVE",
    "300": "FAILED",
    "303": "CREATE_FAILED",
    "400": "DELETED",
    "800": "FROZEN",
}
#: A bound on pages, far above any real project (10 000 shares at the smallest sensible page).
MAX_PAGES: Final = 10_000
NOT_MATCHING_NAME: Final = "name does not match the pattern"
OTHER_ENTERPRISE_PROJECT: Final = "another enterprise project"


class ListingUnreadableError(UnavailableError):
    """The share listing answered something that is not a listing: nothing is selected from it."""


@dataclass(frozen=True, slots=True)
class ShareInfo:
    """One listed file system, as far as selection needs it."""

    share_id: str
    name: str
    status: str
    enterprise_project_id: str | None = None


@dataclass(frozen=True, slots=True)
class SkippedShare:
    """A listed file system that a run does not purge, and why (in the plan's ``skipped_shares``)."""

    share_id: str
    name: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "reason": self.reason}


@dataclass
class Discovery:
    """What :func:`discover` found: the shares to purge, the skipped ones, the count of the rest."""

    selected: list[ShareInfo] = field(default_factory=list)
    skipped: list[SkippedShare] = field(default_factory=list)
    not_matching: Counter[str] = field(default_factory=Counter)

    @property
    def share_ids(self) -> list[str]:
        return [share.share_id for share in self.selected]

    def summary(self) -> dict[str, Any]:
        """For the plan's summary: how many were found and why the others were left out."""
        return {
            "found": len(self.selected) + len(self.skipped) + sum(self.not_matching.values()),
            "selected": len(self.selected),
            "not_matching": dict(self.not_matching),
        }


class SharePager(Protocol):
    """One page of the share listing: the classified answer and its body. The task API's client
    is one (``SfsTurboClient.shares_page``: same auth, fleet limiter and metrics)."""

    def shares_page(self, *, offset: int, limit: int) -> tuple[ApiAnswer, bytes]: ...


def list_shares(
    pager: SharePager,
    *,
    page_size: int,
    retries: int = 6,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[ShareInfo | SkippedShare]:
    """Every listed file system, all pages; an entry that cannot be used is a :class:`SkippedShare`.

    A page that answers 5xx, 429 or nothing is asked again with backoff (honouring
    ``Retry-After``) up to ``retries`` times; then, and for any other error, :class:`ApiError`
    (:class:`CredentialsRefusedError` for refused credentials) is raised. An unreadable page
    raises :class:`ListingUnreadableError`.
    """
    seen: set[str] = set()
    offset = 0
    for _ in range(MAX_PAGES):
        answer, body = _page(pager, offset, page_size, retries, sleep)
        items = _items(body, answer)
        fresh = 0
        for item in items:
            entry = _entry(item)
            if entry.share_id in seen:
                continue
            seen.add(entry.share_id)
            fresh += 1
            yield entry
        if len(items) < page_size:
            return
        if fresh == 0:
            raise ListingUnreadableError(
                f"GET {answer.path}: page at offset {offset} repeats shares already listed "
                "(the server ignores offset?): the listing cannot be trusted"
            )
        offset += page_size
    raise ListingUnreadableError(f"share listing longer than {MAX_PAGES} pages of {page_size}: refused")


def discover(
    pager: SharePager,
    *,
    page_size: int,
    pattern: str = "*",
    enterprise_project_id: str | None = None,
    retries: int = 6,
    sleep: Callable[[float], None] = time.sleep,
) -> Discovery:
    """List the project's file systems and select the available ones that match (module docstring)."""
    found = Discovery()
    for entry in list_shares(pager, page_size=page_size, retries=retries, sleep=sleep):
        if isinstance(entry, SkippedShare):
            found.skipped.append(entry)
        elif entry.status != AVAILABLE:
            found.skipped.append(SkippedShare(entry.share_id, entry.name, _status_reason(entry.status)))
        elif not fnmatchcase(entry.name, pattern):
            found.not_matching[NOT_MATCHING_NAME] += 1
        elif enterprise_project_id is not None and entry.enterprise_project_id != enterprise_project_id:
            found.not_matching[OTHER_ENTERPRISE_PROJECT] += 1
        else:
            found.selected.append(entry)
    return found


def _status_reason(status: str) -> str:
    if not status:
        return "no status listed: not known to be available"
    name = STATUS_NAMES.get(status)
    shown = f"{status} ({name})" if name else f"{show_value(status, 40)} (unknown)"
    return f"status {shown}, not 200 (ACTIVE)"


def _page(
    pager: SharePager, offset: int, limit: int, retries: int, sleep: Callable[[float], None]
) -> tuple[ApiAnswer, bytes]:
    for retry in range(retries + 1):
        try:
            answer, body = pager.shares_page(offset=offset, limit=limit)
        except RateLimitWaitTooLong as exc:
            if retry == retries:
                raise
            sleep(min(exc.needed, 60.0))
            continue
        if answer.ok:
            return answer, body
        if answer.verdict not in (Verdict.RETRYABLE, Verdict.THROTTLED) or retry == retries:
            break
        sleep(answer.retry_after_s or min(30.0, 0.25 * 2**retry))
    if answer.verdict in (Verdict.FATAL, Verdict.AUTH_RENEW):
        raise CredentialsRefusedError(answer)
    raise ApiError(answer)


def _items(body: bytes, answer: ApiAnswer) -> list[Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ListingUnreadableError(f"GET {answer.path}: the answer is not JSON: {printable(body, 80)}") from None
    shares = data.get("shares") if isinstance(data, dict) else None
    if not isinstance(shares, list):
        raise ListingUnreadableError(f"GET {answer.path}: the answer has no 'shares' list: {printable(body, 80)}")
    return shares


def _entry(item: Any) -> ShareInfo | SkippedShare:
    if not isinstance(item, dict):
        shown = printable(json.dumps(item), 60)
        return SkippedShare(f"?{shown}", "", "listed entry is not an object")
    share_id, name = item.get("id"), _text(item.get("name"))
    if (why := explain(share_id)) is not None:
        return SkippedShare(f"?{printable(str(share_id), 60)}", name, f"share id {why}")
    assert isinstance(share_id, str)
    enterprise = item.get("enterprise_project_id")
    return ShareInfo(
        share_id=share_id,
        name=name,
        # A code as a string in the reference; a number is read the same way.
        status=_text(item.get("status")).strip(),
        enterprise_project_id=str(enterprise) if isinstance(enterprise, str | int) else None,
    )


def _text(value: object) -> str:
    return printable(str(value), 128) if isinstance(value, str | int) and not isinstance(value, bool) else ""


def discover_shares(client: SfsTurboClient, settings: Settings) -> Discovery:
    """:func:`discover` with the settings' page size, name pattern and enterprise project."""
    return discover(
        client,
        page_size=settings.list_page_size,
        pattern=settings.share_name_pattern,
        enterprise_project_id=settings.share_enterprise_project_id,
    )
