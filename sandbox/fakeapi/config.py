"""The fake's configuration: one dataclass, loadable from JSON and patchable while it runs.

Every fault knob lives here so that a test, a benchmark or an operator can start and stop an
outage, a throttle or a flaky phase mid-run with ``POST /_fake/config`` and a JSON patch.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

SHARE_ERROR_STYLES: Final = ("400-0002", "404-0002", "403-9000")
OUTAGE_STATUSES: Final = (500, 503)
DEFAULT_TOKEN: Final = "fake-token"  # noqa: S105 - a well-known value for a local fake, not a secret


def _default_users() -> list[dict[str, str]]:
    return [{"name": "fake-user", "password": "fake-password", "domain": "fake-domain"}]


@dataclass
class FakeConfig:
    """Everything the fake does. Fields in :data:`STARTUP_ONLY` cannot change while it runs."""

    # --- Where it listens -----------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port, chosen at start

    # --- The inventory it starts with -----------------------------------------------------
    project_id: str | None = None  # None: derived from `seed`, so a seed gives the same IDs
    region: str = "cn-north-4"  # an IAM login may scope to the project by this name
    shares: int = 4
    tasks_per_share: int = 500
    seed: int = 7
    seed_file: str | None = None  # JSON lines (see seed.load); replaces the generated inventory

    # --- How the task API behaves (the parts reality has not confirmed) -------------------
    default_limit: int = 1000
    max_limit: int | None = None  # None: any limit is accepted; else larger ones answer SFS.TURBO.0001
    count_is_page_size: bool = False  # False: `count` is the total matching the filters
    deleting_seconds: float = 2.0  # a deleted task shows DELETING this long, then is gone (0: at once)
    share_error_style: str = "400-0002"  # unknown share: 400-0002, 404-0002 or 403-9000
    create_status: int = 200
    delete_doing: bool = True  # False: deleting a DOING task answers busy (SFS.TURBO.0011)

    # --- Authentication -------------------------------------------------------------------
    auth_required: bool = True
    tokens: list[str] = field(default_factory=lambda: [DEFAULT_TOKEN])
    iam_users: list[dict[str, str]] = field(default_factory=_default_users)
    token_ttl_s: float = 86400.0
    aksk: dict[str, str] = field(default_factory=dict)  # AK -> SK
    security_tokens: dict[str, str] = field(default_factory=dict)  # AK -> the X-Security-Token it needs
    max_clock_skew_s: float = 900.0
    clock_offset_s: float = 0.0  # added to the gateway's clock when it checks X-Sdk-Date (a skewed client)

    # --- The metadata service's temporary credentials (sandbox.fakeapi.metadata) -----------
    metadata_credential_ttl_s: float = 3600.0  # how long each issued temporary AK/SK lives
    metadata_session_tokens: bool = True  # False: an older service, without the session-token call
    metadata_agency: bool = True  # False: no agency bound to the instance (401 with the SDK's text)
    metadata_fail_first: int = 0  # the first K securitykey requests answer 500
    # Agencies IAM's assume-role call hands out (sandbox.fakeapi.agency): {"domain", "name"} each.
    agencies: list[dict[str, str]] = field(default_factory=list)
    agency_credential_ttl_s: float | None = None  # None: as long as asked (duration_seconds)

    # --- Faults ---------------------------------------------------------------------------
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0  # uniform extra in [0, jitter]
    error_ratio: float = 0.0  # DELETEs answered 500 SFS.TURBO.0005
    # True: error_ratio is decided per (task, attempt number) by a stable hash salted with
    # fault_seed, instead of by the shared dice. The fleet still sees a random-looking brownout,
    # but which attempts of which task fail no longer depends on the order requests arrive in,
    # so a test can know in advance whether any task meets more failures than its retries.
    error_per_attempt: bool = False
    busy_ratio: float = 0.0  # DELETEs answered 400 SFS.TURBO.0011
    # Tasks (a stable hash of task_id below this ratio) whose every DELETE is refused for good:
    # 400 SFS.TURBO.0001, which no retry can fix (the failure-threshold tests need it).
    permanent_error_ratio: float = 0.0
    fail_first_k: int = 0  # chosen tasks fail (500) their first K delete attempts
    fail_first_ratio: float = 0.0  # which tasks: a stable hash of task_id below this ratio
    fail_first_task_ids: list[str] = field(default_factory=list)  # ... and/or these
    outage: bool = False
    outage_until: float | None = None  # epoch seconds; an outage also runs while now < this
    outage_status: int = 503
    rate_limit_rps: float = 0.0  # 0: no throttle; else at most this many API calls per sliding second
    # The gateway's per-user throttle (sandbox.fakeapi.credentials): each credential (AK, or
    # "token:<digest>") at most this many calls per sliding second (0: none), or as set for it.
    credential_rate_limit_rps: float = 0.0
    credential_rates: dict[str, float] = field(default_factory=dict)
    retry_after: float | None = None  # when set, a 429 carries `Retry-After` (seconds)
    drop_ratio: float = 0.0  # DELETEs whose connection is closed without an answer
    drop_after_effect: bool = False  # True: the dropped DELETE still took effect (a lost 202)
    fault_seed: int | None = None  # None: fault dice are not reproducible

    # --- What it keeps for tests ----------------------------------------------------------
    # True: every answered task API call is kept with the request ID it carried (memory grows
    # with each request, so off unless a test compares the audit's request IDs with ours).
    record_request_ids: bool = False

    # --- SMN (the publish call of Simple Message Notification, for notifications) ----------
    smn_fail_first: int = 0  # the first K publishes (since start or reset_stats) answer 500

    def validate(self) -> FakeConfig:
        """Raise :class:`ConfigError` listing every bad field; return self when all are fine."""
        problems = [*self._range_problems(), *self._choice_problems()]
        if problems:
            raise ConfigError(problems)
        return self

    def _range_problems(self) -> list[str]:
        problems: list[str] = []
        for name in ("error_ratio", "busy_ratio", "fail_first_ratio", "drop_ratio", "permanent_error_ratio"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                problems.append(f"{name} must be within [0, 1], not {value}")
        for name in (
            "latency_ms",
            "latency_jitter_ms",
            "deleting_seconds",
            "rate_limit_rps",
            "credential_rate_limit_rps",
            "fail_first_k",
            "smn_fail_first",
            "metadata_fail_first",
            "shares",
            "tasks_per_share",
        ):
            if getattr(self, name) < 0:
                problems.append(f"{name} must not be negative")
        if self.token_ttl_s <= 0 or self.metadata_credential_ttl_s <= 0:
            problems.append("token_ttl_s and metadata_credential_ttl_s must be positive")
        if self.retry_after is not None and self.retry_after < 0:
            problems.append("retry_after must not be negative")
        if self.default_limit < 1 or (self.max_limit is not None and self.max_limit < 1):
            problems.append("default_limit and max_limit must be at least 1")
        if not 0 <= self.port <= 65535:
            problems.append("port must be within 0..65535")
        return problems

    def _choice_problems(self) -> list[str]:
        problems: list[str] = []
        if self.share_error_style not in SHARE_ERROR_STYLES:
            problems.append(f"share_error_style must be one of {', '.join(SHARE_ERROR_STYLES)}")
        if self.outage_status not in OUTAGE_STATUSES:
            problems.append("outage_status must be 500 or 503")
        if not 200 <= self.create_status < 300:
            problems.append("create_status must be a 2xx code")
        if not is_loopback(self.host):
            problems.append(f"host {self.host!r} is not a loopback address (127.0.0.0/8 or ::1)")
        if any(not {"name", "password", "domain"} <= user.keys() for user in self.iam_users):
            problems.append("each of iam_users needs name, password and domain")
        return problems

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FakeConfig:
        return apply_patch(cls(), data, runtime=False)

    @classmethod
    def from_json_file(cls, path: str | Path) -> FakeConfig:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ConfigError([f"{path}: the config must be a JSON object"])
        return cls.from_dict(data)

    def outage_active(self, now: float) -> bool:
        return self.outage or (self.outage_until is not None and now < self.outage_until)


#: Fields that shape the listening socket or the initial inventory: fixed once running.
STARTUP_ONLY: Final = frozenset(
    {"host", "port", "project_id", "region", "shares", "tasks_per_share", "seed", "seed_file"}
)


class ConfigError(ValueError):
    """One or more bad config values; ``problems`` has one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``: the fake must never listen beyond this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def apply_patch(config: FakeConfig, patch: dict[str, Any], *, runtime: bool = True) -> FakeConfig:
    """A validated copy of ``config`` with ``patch`` applied; the original is left alone.

    Values are type-checked against the field annotations (an int is fine for a float), so a
    typo in a test's patch fails loudly instead of silently doing nothing.
    """
    hints = typing.get_type_hints(FakeConfig)
    problems: list[str] = []
    changes: dict[str, Any] = {}
    for name, value in patch.items():
        if name not in hints:
            problems.append(f"unknown field {name!r}")
        elif runtime and name in STARTUP_ONLY:
            problems.append(f"{name} cannot change while the fake runs")
        elif not _fits(value, hints[name]):
            problems.append(f"{name}: {value!r} is not a valid {_type_name(hints[name])}")
        else:
            changes[name] = float(value) if hints[name] is float else value
    if problems:
        raise ConfigError(problems)
    return dataclasses.replace(config, **changes).validate()


def _fits(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_fits(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        return isinstance(value, list) and all(_fits(item, args[0]) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(_fits(k, args[0]) and _fits(v, args[1]) for k, v in value.items())
    return False


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint)
