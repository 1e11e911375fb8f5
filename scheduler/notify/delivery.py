"""Sending one notification over HTTP: a timeout, a few retries with backoff, a bounded answer.

What every target shares. A target is anything with a ``name`` and ``send(event) -> Delivery``;
:func:`deliver` runs one POST with the retry policy and never raises for an HTTP or network
failure: the result says what happened, for the audit.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Final, Protocol

import httpx

from scheduler.notify.events import Event
from worker.api.answers import parse_retry_after
from worker.retry import RetryPolicy
from worker.settings import Settings

USER_AGENT: Final = "sfs-turbo-cleanup/0.1 (notifications)"
EVENT_HEADER: Final = "X-Sfs-Cleanup-Event"
#: Only this much of an answer is read: a receiver's answer is an acknowledgement, not data.
MAX_ANSWER_BYTES: Final = 64 * 1024
#: Besides 5xx: timeouts the server reports, "too early" and throttling. Other 4xx will not mend.
_RETRY_STATUSES: Final = frozenset({408, 425, 429})


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: httpx.Headers
    body: bytes


@dataclass(frozen=True, slots=True)
class Delivery:
    """What came of sending one event to one target (for the audit: never a secret)."""

    ok: bool
    attempts: int
    status: int | None = None  # the last HTTP status; None when no answer came
    error: str | None = None  # why it failed, one line
    request_id: str | None = None
    message_id: str | None = None  # SMN's ID of the published message


class Target(Protocol):
    name: str

    def send(self, event: Event) -> Delivery: ...

    def close(self) -> None: ...


def retry_policy(settings: Settings) -> RetryPolicy:
    """``SFS_CLEANUP_NOTIFY_RETRIES``, with the API's backoff steps (capped: a pass must end)."""
    return RetryPolicy(
        max_retries=settings.notify_retries,
        base_s=settings.retry_backoff_base_s,
        cap_s=min(settings.retry_backoff_max_s, 30.0),
    )


def send_budget_s(settings: Settings) -> float:
    """The longest one send may take: every attempt timing out in each phase, plus every backoff.

    The claim on the event outlasts this, so no other pass sends while this one still may.
    """
    policy = retry_policy(settings)
    attempts = policy.max_retries + 1
    backoff = sum(min(policy.cap_s, policy.base_s * 2.0 ** (n - 1)) for n in range(1, attempts))
    # connect, write and read each have the timeout: three per attempt at worst.
    return attempts * 3 * settings.notify_timeout_s + backoff


def http_client(settings: Settings, transport: httpx.BaseTransport | None = None) -> httpx.Client:
    # No redirects: a receiver that moved must be reconfigured, and a redirect would carry the
    # body (and for SMN the signature) to a host nobody chose.
    return httpx.Client(
        timeout=httpx.Timeout(settings.notify_timeout_s),
        transport=transport,
        follow_redirects=False,
        headers={"User-Agent": USER_AGENT},
    )


def read_answer(response: AbstractContextManager[httpx.Response]) -> Answer:
    """Status, headers and at most :data:`MAX_ANSWER_BYTES` of the body of a streamed response."""
    with response as r:
        chunks: list[bytes] = []
        size = 0
        for chunk in r.iter_bytes():
            chunks.append(chunk[: MAX_ANSWER_BYTES - size])
            size += len(chunk)
            if size >= MAX_ANSWER_BYTES:
                break
        return Answer(r.status_code, r.headers, b"".join(chunks))


def deliver(
    post: Callable[[], Answer],
    policy: RetryPolicy,
    *,
    budget_s: float,
    describe: Callable[[Answer], dict[str, Any]] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Delivery:
    """POST until a 2xx, a failure that retrying cannot mend, the retries or the budget run out.

    ``describe(answer)`` picks the IDs out of a 2xx answer (``request_id``, ``message_id``).
    """
    deadline = clock() + budget_s
    attempt = 0
    status: int | None = None
    error = ""
    retry_after: float | None = None
    while True:
        attempt += 1
        try:
            answer = post()
        except httpx.TransportError as exc:  # timeouts, refused and reset connections
            status, error, retry_after = None, _transport_error(exc), None
        else:
            status = answer.status
            if 200 <= answer.status < 300:
                found = describe(answer) if describe is not None else {}
                return Delivery(True, attempt, status, None, found.get("request_id"), found.get("message_id"))
            error = f"HTTP {answer.status}{_error_detail(answer.body)}"
            if answer.status < 500 and answer.status not in _RETRY_STATUSES:
                return Delivery(False, attempt, status, error)
            retry_after = parse_retry_after(answer.headers.get("retry-after"))
        if attempt > policy.max_retries:
            return Delivery(False, attempt, status, error)
        wait = max(policy.delay(attempt), min(retry_after or 0.0, policy.cap_s))
        if clock() + wait >= deadline:
            return Delivery(False, attempt, status, error + " (out of time for this pass)")
        sleep(wait)


def _transport_error(exc: httpx.TransportError) -> str:
    # The exception's text names the failure, not the URL (httpx keeps that on the request).
    return f"{type(exc).__name__}: {str(exc)[:200] or 'no answer'}"


def _error_detail(body: bytes) -> str:
    """An error code and message from the answer, when it has the usual shapes (SMN, gateway)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""
    if not isinstance(data, dict):
        return ""
    code = data.get("code") or data.get("error_code")
    message = data.get("message") or data.get("error_msg")
    parts = [str(p)[:200] for p in (code, message) if p]
    return f" {': '.join(parts)}" if parts else ""
