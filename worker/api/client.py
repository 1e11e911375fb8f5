"""The SFS Turbo HPC-cache task API on httpx: list, show and delete.

Every call returns or carries an :class:`~worker.api.answers.ApiAnswer`, already classified;
HTTP answers never raise. Bodies are read up to :data:`~worker.api.transport.MAX_BODY_BYTES`:
a larger one is not read whole into memory but makes the answer unreadable (retryable, code
``response.too_large``).

Every request the client sends, a 401 renewal's resend included, waits for the fleet limiter
when it has one: the limiter's budget is the gateway's, and the gateway counts the resend.

IDs are checked before a URL is built, so a bad ID raises :class:`~worker.ids.InvalidIdError`
and nothing is sent. Authentication is an ``httpx.Auth`` (see :mod:`worker.api.auth`), and tests
pass an ``httpx.MockTransport`` as ``transport``.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import quote, urlsplit

import httpx

from worker.api.answers import ApiAnswer, Verdict, classify, parse_error_body, parse_retry_after
from worker.api.pages import json_object, task_from
from worker.api.transport import (
    MAX_BODY_BYTES,
    TOO_LARGE,
    BodyTooLargeError,
    Urllib3Transport,
    read_bounded,
    request_id_of,
)
from worker.api.wire import Wire, WireBodyTooLargeError, WireFlow, WireRequest, as_is, drive, send_through
from worker.errors import EXIT_USAGE, UnavailableError, UsageError
from worker.ids import check_project_id, check_share_id, check_task_id
from worker.models import TaskInfo
from worker.ratelimit import FleetLimiter, RateLimitWaitTooLong

USER_AGENT: Final = "sfs-turbo-cleanup/0.1"

Pace = Callable[[], object]


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """What the client needs from the settings (kept small so tests can build one by hand)."""

    endpoint: str
    project_id: str
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    page_size: int = 1000
    max_connections: int = 64

    @classmethod
    def from_settings(cls, settings: Any, *, max_connections: int | None = None) -> ClientConfig:
        settings.require_api()
        return cls(
            endpoint=settings.api_endpoint,
            project_id=settings.project_id,
            connect_timeout_s=settings.http_connect_timeout_s,
            read_timeout_s=settings.http_read_timeout_s,
            page_size=settings.list_page_size,
            max_connections=max_connections or max(8, settings.batch_concurrency * 2),
        )


class ApiError(UnavailableError):
    """A list or show call that did not succeed (deletes return their answer instead)."""

    def __init__(self, answer: ApiAnswer) -> None:
        self.answer = answer
        super().__init__(f"{answer.method} {answer.path}: {answer.describe()}")


class ShareMissingError(ApiError):
    """The file system does not exist or is not visible to these credentials."""


class CredentialsRefusedError(ApiError, UsageError):
    """The API refused the credentials or the endpoint for good: a setting to fix, not an outage."""

    exit_code = EXIT_USAGE


class SfsTurboClient:
    """A pooled, reusable client for one project. Make one per process, after fork."""

    def __init__(
        self,
        config: ClientConfig,
        *,
        auth: httpx.Auth | None = None,
        transport: httpx.BaseTransport | None = None,
        pace: Pace | None = None,
        limiter: FleetLimiter | None = None,
        observe: Callable[[Literal["list"], ApiAnswer], None] | None = None,
    ) -> None:
        """``pace`` is called before every request (the fleet limiter's ``acquire``), if given;
        ``limiter`` sets it to the limiter's ``acquire`` and also tells the limiter of the 429s
        of listings. A ``pace`` that is a limiter's own ``acquire`` counts as that limiter: the
        scheduler builds its listing client so, and a listing's 429 must slow the whole fleet
        like a DELETE's. ``observe("list", answer)`` is told of every listing page's answer (the
        fleet's API metrics, :mod:`worker.apimetrics`); the deletion job observes its own calls.
        """
        self.config = config
        self._observe = observe
        if limiter is None and isinstance(getattr(pace, "__self__", None), FleetLimiter):
            limiter = getattr(pace, "__self__")  # noqa: B009 - narrowed by the isinstance above
        self._limiter = limiter
        self._pace = pace if pace is not None else limiter.acquire if limiter is not None else None
        self.project_id = check_project_id(config.project_id)
        self._bases: dict[str, str] = {}  # share ID -> its checked, quoted path (see _base)
        # httpx's auth flow, driven here instead of through httpx.Client: the Client's
        # per-request work (URL merging, cookies, hooks, redirects) cost about 200 us of CPU per
        # DELETE, a third of the whole call, measured on the throughput benchmark; nothing of it
        # applies to this API. On the wire, urllib3 behind httpx's transport seam
        # (:class:`Urllib3Transport`): httpcore and h11 cost about twice its CPU per request.
        # One connection per sending thread instead of one pool for all of them: a pool shared
        # by 16 threads serialises them on its lock. A thread sends one request at a time (a
        # 401's resend follows its first send), so one keep-alive connection each is enough. At
        # most ``max_connections`` transports are made; threads beyond that share the existing
        # ones (and wait for their connection), so the bound on connections holds. A
        # ``transport`` given by the caller (tests' MockTransport) is used as it is, by every thread.
        self._given_transport = transport
        self._local = threading.local()
        self._transports: list[httpx.BaseTransport] = []
        self._transports_lock = threading.Lock()
        self._ssl_context: ssl.SSLContext | None = None
        self._auth = auth or httpx.Auth()  # the base class sends each request as it is
        self._endpoint = config.endpoint.rstrip("/")
        self._headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        self._timeout = httpx.Timeout(config.read_timeout_s, connect=config.connect_timeout_s).as_dict()
        # DELETE and show (no query, no body) go over the hand-written wire (:mod:`worker.api.wire`,
        # about a tenth of the CPU of httpx and urllib3) when the auth mode can put its headers on
        # it; listings, tests' transports and other auth modes go through httpx.
        self._wire: Wire | None = None
        self._wire_flow: WireFlow | None = None
        if transport is None and urlsplit(self._endpoint).scheme in ("http", "https"):
            self._wire_flow = as_is if auth is None or type(auth) is httpx.Auth else getattr(auth, "wire_flow", None)
            if self._wire_flow is not None:
                self._wire = Wire(
                    self._endpoint,
                    connect_timeout_s=config.connect_timeout_s,
                    read_timeout_s=config.read_timeout_s,
                    ssl_context=self._ssl,
                    max_connections=config.max_connections,
                )

    def __enter__(self) -> SfsTurboClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._given_transport is not None:
            self._given_transport.close()
        with self._transports_lock:
            transports, self._transports = self._transports, []
        for transport in transports:
            transport.close()
        if self._wire is not None:
            self._wire.close()

    def _ssl(self) -> ssl.SSLContext:
        """The one SSL context (verifying, as httpx's default): building one costs ~17 ms."""
        with self._transports_lock:
            if self._ssl_context is None:
                self._ssl_context = httpx.create_ssl_context()
            return self._ssl_context

    def _transport(self) -> httpx.BaseTransport:
        """This thread's transport (see ``__init__``)."""
        if self._given_transport is not None:
            return self._given_transport
        transport: httpx.BaseTransport | None = getattr(self._local, "transport", None)
        if transport is None:
            context = self._ssl()
            with self._transports_lock:
                if len(self._transports) < self.config.max_connections:
                    transport = Urllib3Transport(context)
                    self._transports.append(transport)
                else:
                    transport = self._transports[threading.get_ident() % len(self._transports)]
            self._local.transport = transport
        return transport

    def _send(self, method: str, path: str, params: dict[str, Any] | None, resend_pace: Pace | None) -> httpx.Response:
        """One request through the auth flow (which may renew a token and send it again).

        ``resend_pace`` is called before each request the flow sends again (a 401 renewal's
        resend): it is one more request for the gateway's rate limit, so it waits for a slot like
        any other. Raises :class:`BodyTooLargeError` when a body exceeds :data:`MAX_BODY_BYTES`.
        """
        request = httpx.Request(
            method, self._endpoint + path, params=params, headers=self._headers, extensions={"timeout": self._timeout}
        )
        transport = self._transport()

        def send(request: httpx.Request) -> httpx.Response:
            # A body over the bound raises here: the flow must not act on an unread answer.
            return read_bounded(transport.handle_request(request), request)

        return drive(self._auth.sync_auth_flow(request), send, resend_pace)

    # --- paths: only ever built from checked IDs, quoted anyway as a second fence ----------
    def _base(self, share_id: str) -> str:
        base = self._bases.get(share_id)
        if base is None:  # once per share: a job asks for the same one a hundred times
            share = check_share_id(share_id)
            base = f"/v1/{quote(self.project_id, safe='')}/sfs-turbo/{quote(share, safe='')}/hpc-cache"
            if len(self._bases) < 10_000:
                self._bases[share_id] = base
        return base

    def task_path(self, share_id: str, task_id: str) -> str:
        return f"{self._base(share_id)}/task/{quote(check_task_id(task_id), safe='')}"

    # --- calls -----------------------------------------------------------------------------
    def _call(
        self, method: str, path: str, params: dict[str, Any] | None = None, *, resend_pace: Pace | None = None
    ) -> tuple[ApiAnswer, bytes]:
        if self._pace is not None:
            self._pace()
        started = time.perf_counter()
        status: int
        headers: Mapping[str, str]
        try:
            if params is None and self._wire is not None and self._wire_flow is not None:
                request = WireRequest(method, self._wire.prefix + path, {"Host": self._wire.netloc, **self._headers})
                wired = send_through(self._wire, self._wire_flow, request, resend_pace or self._pace)
                status, headers, body = wired.status, wired.headers, wired.body
            else:
                response = self._send(method, path, params, resend_pace or self._pace)
                status, headers, body = response.status_code, response.headers, response.content
        except (BodyTooLargeError, WireBodyTooLargeError) as exc:
            if isinstance(exc, BodyTooLargeError):
                status, headers = exc.response.status_code, exc.response.headers
            else:
                status, headers = exc.status, exc.headers
            return (
                ApiAnswer(
                    method=method,
                    path=path,
                    status=status,
                    # Unreadable: what it said is unknown (an error code, a page of tasks).
                    # Retryable like a lost answer: a DELETE asked again answers "already gone".
                    verdict=Verdict.RETRYABLE,
                    request_id=request_id_of(headers),
                    error_code=TOO_LARGE,
                    error_msg=f"answer body larger than {MAX_BODY_BYTES} bytes, not read",
                    latency_ms=(time.perf_counter() - started) * 1000,
                ),
                b"",
            )
        except httpx.TransportError as exc:
            return (
                ApiAnswer(
                    method=method,
                    path=path,
                    status=0,
                    verdict=Verdict.RETRYABLE,
                    error_code=f"transport.{type(exc).__name__}",
                    error_msg=str(exc)[:200] or type(exc).__name__,
                    latency_ms=(time.perf_counter() - started) * 1000,
                ),
                b"",
            )
        latency_ms = (time.perf_counter() - started) * 1000
        code, msg = (None, None) if 200 <= status < 300 else parse_error_body(body)
        return (
            ApiAnswer(
                method=method,
                path=path,
                status=status,
                verdict=classify(status, code),
                request_id=request_id_of(headers),
                error_code=code,
                error_msg=msg,
                latency_ms=latency_ms,
                retry_after_s=parse_retry_after(headers.get("retry-after")),
            ),
            body,
        )

    def delete_task(self, share_id: str, task_id: str, *, resend_pace: Pace | None = None) -> ApiAnswer:
        """``DELETE .../task/{task_id}``: 202 is :attr:`Verdict.OK`; nothing raises but bad IDs
        and what ``resend_pace`` raises.

        ``resend_pace`` (e.g. the fleet limiter's ``acquire``) is called before the auth flow
        sends the request again after renewing a token; without it, the client's own ``pace``.
        A caller that takes the first slot itself passes it, so that the resend takes one too.
        """
        answer, _ = self._call("DELETE", self.task_path(share_id, task_id), resend_pace=resend_pace)
        return answer

    def show_task(
        self, share_id: str, task_id: str, *, resend_pace: Pace | None = None
    ) -> tuple[ApiAnswer, TaskInfo | None]:
        """``GET .../task/{task_id}``: the task when the answer is OK, else ``None``
        (``resend_pace`` as for :meth:`delete_task`)."""
        answer, body = self._call("GET", self.task_path(share_id, task_id), resend_pace=resend_pace)
        if not answer.ok:
            return answer, None
        data = json_object(body)
        return answer, task_from(self.project_id, share_id, data) if data else None

    def shares_page(self, *, offset: int, limit: int) -> tuple[ApiAnswer, bytes]:
        """One page of ``GET .../sfs-turbo/shares/detail``: the answer and its body (the scheduler reads it)."""
        path = f"/v1/{quote(self.project_id, safe='')}/sfs-turbo/shares/detail"
        return self._call("GET", path, {"offset": offset, "limit": limit})

    def list_page(
        self, share_id: str, *, offset: int, limit: int, status: str | None = None, type: str | None = None
    ) -> tuple[ApiAnswer, list[TaskInfo]]:
        """One page of ``GET .../tasks``."""
        params: dict[str, Any] = {"offset": offset, "limit": limit}
        if status:
            params["status"] = status
        if type:
            params["type"] = type
        answer, body = self._call("GET", f"{self._base(share_id)}/tasks", params)
        if not answer.ok:
            return answer, []
        data = json_object(body) or {}
        items = data.get("tasks")
        tasks = [
            task_from(self.project_id, share_id, item)
            for item in (items if isinstance(items, list) else [])
            if isinstance(item, dict)
        ]
        return answer, tasks

    def list_tasks(
        self, share_id: str, *, status: str | None = None, type: str | None = None, retries: int = 6
    ) -> Iterator[TaskInfo]:
        """Every task of a share: pages of ``offset += limit`` until a short or empty page.

        ``count`` is not used to stop, because whether it is the total or the page size is not
        documented (Huawei's Terraform provider pages the same way). A page that answers 5xx,
        429 or nothing is asked again with backoff (honouring ``Retry-After``), up to ``retries``
        times; then, and for any other error, :class:`ApiError` is raised. With a limiter, a 429
        slows the whole fleet (:meth:`FleetLimiter.throttled`, the same as a DELETE's) and the
        next page waits for its slot instead of sleeping here; a slot further away than the
        limiter's wait bound is waited for here, and counts as a retry.
        """
        offset, limit = 0, self.config.page_size
        while True:
            for retry in range(retries + 1):
                try:
                    answer, page = self.list_page(share_id, offset=offset, limit=limit, status=status, type=type)
                    if self._observe is not None:
                        self._observe("list", answer)
                except RateLimitWaitTooLong as exc:
                    answer, page = _no_slot(f"{self._base(share_id)}/tasks", exc), []
                    if retry < retries:
                        time.sleep(min(exc.needed, 60.0))
                        continue
                    break
                if answer.verdict not in (Verdict.RETRYABLE, Verdict.THROTTLED) or retry == retries:
                    break
                if answer.verdict is Verdict.THROTTLED and self._limiter is not None:
                    self._limiter.throttled(answer.retry_after_s)
                    continue
                time.sleep(answer.retry_after_s or min(30.0, 0.25 * 2**retry))
            if not answer.ok:
                raise _error_for(answer)
            yield from page
            if len(page) < limit:
                return
            offset += limit


def _no_slot(path: str, exc: RateLimitWaitTooLong) -> ApiAnswer:
    return ApiAnswer(
        method="GET",
        path=path,
        status=0,
        verdict=Verdict.THROTTLED,
        error_code="ratelimit.wait_too_long",
        error_msg=str(exc),
    )


def _error_for(answer: ApiAnswer) -> ApiError:
    """The error a failed listing raises: its kind says what the user should do."""
    if answer.verdict is Verdict.SHARE_MISSING:
        return ShareMissingError(answer)
    if answer.verdict in (Verdict.FATAL, Verdict.AUTH_RENEW):
        return CredentialsRefusedError(answer)
    return ApiError(answer)
