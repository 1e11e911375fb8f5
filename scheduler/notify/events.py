"""What needs a human, and what to tell them: the events the reconciler notifies, and their text.

An event is found from what Redis already holds (a run's hash, the schedule's slot key), never
from a message, so a pass that is repeated, redelivered or run by two schedulers at once finds
the same events with the same identity (:attr:`Event.key`); :mod:`.outbox` sends each once.

Bodies are built from the run's hash only (IDs, counters, times, the reason) and then scrubbed of
every configured secret value, so no token, password, key or webhook URL can reach a target even
if a reason's text were ever to quote one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

from scheduler.guard import AWAITING_CONSENT
from worker.ledger import Audit, Outcome
from worker.settings import Settings

SOURCE: Final = "sfs-turbo-cleanup"
#: How many of the newest runs each pass looks at, besides every run of the active index.
RECENT_RUNS: Final = 50
_MAX_REASON_CHARS: Final = 2000


class EventKind(StrEnum):
    """The kinds ``SFS_CLEANUP_NOTIFY_EVENTS`` may name (``worker.settings.NOTIFY_EVENT_KINDS``)."""

    RUN_FAILED = "run_failed"  # finished, at least one task failed
    RUN_ABORTED = "run_aborted"  # stopped on its own: failure threshold, credentials, a planner lost
    RUN_CANCELLED = "run_cancelled"  # stopped by an operator
    RUN_HELD = "run_held"  # planned and frozen, waiting for an approval
    NIGHTLY_MISSED = "nightly_missed"  # the schedule's latest slot passed with no run


#: Kinds that say a run is over: compared with the time a target was first configured.
RUN_ENDS: Final = frozenset({EventKind.RUN_FAILED, EventKind.RUN_ABORTED, EventKind.RUN_CANCELLED})


@dataclass(frozen=True, slots=True)
class Event:
    kind: EventKind
    key: str  # the identity each target gets once: "run_failed:RUN", "nightly_missed:SLOT"
    at: float  # when it happened (epoch s): the run's end or the slot
    run: Mapping[str, str] = field(default_factory=dict)  # the run's hash; empty for a missed slot
    slot: str | None = None  # ISO time of a missed slot
    schedule: str | None = None  # which schedule's slot, when there are several

    @property
    def run_id(self) -> str | None:
        return self.run.get("run_id") or None


def run_event_kind(meta: Mapping[str, str]) -> EventKind | None:
    """The event a run's hash stands for now, if any.

    Statuses are compared as stored strings: ``held`` comes from a release that may know more
    statuses than this one, and an unknown one is simply not an event.
    """
    status = meta.get("status")
    if meta.get("hold_reason") == AWAITING_CONSENT and not meta.get("approved_by"):
        return None  # a plan its user declined at a terminal (held, later expired): nobody to page
    if status == "finished":
        return EventKind.RUN_FAILED if _int(meta.get(f"n:{Outcome.FAILED.value}")) > 0 else None
    return {
        "aborted": EventKind.RUN_ABORTED,
        "cancelled": EventKind.RUN_CANCELLED,
        "held": EventKind.RUN_HELD,
    }.get(status or "")


def run_events(audit: Audit, wanted: Iterable[str], limit: int = RECENT_RUNS) -> list[Event]:
    """Events of the newest ``limit`` runs and of every run in the active index (a held run
    waits there however old it is), oldest first."""
    wanted = set(wanted)
    metas = {m["run_id"]: m for m in audit.list_runs(limit) if m.get("run_id")}
    older = [run_id for run_id in audit.active_runs() if run_id not in metas]
    pipe = audit.redis.pipeline(transaction=False)
    for run_id in older:
        pipe.hgetall(audit.keys.run(run_id))
    for raw in pipe.execute() if older else []:
        meta = {_text(k): _text(v) for k, v in raw.items()}
        if meta.get("run_id"):
            metas[meta["run_id"]] = meta
    events: list[Event] = []
    for meta in metas.values():
        kind = run_event_kind(meta)
        if kind is None or kind.value not in wanted:
            continue
        when = "finished_at" if kind in RUN_ENDS else "held_at"
        at = _float(meta.get(when))
        events.append(Event(kind, f"{kind.value}:{meta['run_id']}", at or _float(meta.get("created_at")), meta))
    return sorted(events, key=lambda e: e.at)


def missed_slot_events(
    audit: Audit, settings: Settings, slots: Iterable[tuple[datetime, str | None]], now: float
) -> list[Event]:
    """The events for unclaimed schedule slots, unless the schedule was off at that time.

    ``slots`` come from the scheduler service: each schedule's latest slot past its catch-up
    window that no run claimed, with the schedule's name (None when there is only one). The
    first pass that sees the schedule enabled writes when it did: a slot before then was never
    the schedule's to run, so enabling the schedule at noon does not report that night's slot.
    """
    key = audit.keys.notify_schedule_on
    if not settings.schedule_enabled:
        audit.redis.delete(key)
        return []
    audit.redis.set(key, repr(now), nx=True)
    on_since = _float(_text(audit.redis.get(key) or b""))
    if EventKind.NIGHTLY_MISSED.value not in settings.notify_events:
        return []
    events = []
    for slot, schedule in slots:
        at = slot.timestamp()
        if on_since and at < on_since:
            continue
        iso = _iso(at)
        key = ":".join([EventKind.NIGHTLY_MISSED.value, *([schedule] if schedule else []), iso])
        events.append(Event(EventKind.NIGHTLY_MISSED, key, at, slot=iso, schedule=schedule))
    return events


# --- What is said ------------------------------------------------------------------------------


def summary(event: Event) -> str:
    """One line saying what happened (the SMN subject, the webhook's ``summary``)."""
    run, run_id = event.run, event.run_id
    if event.kind is EventKind.RUN_FAILED:
        failed = _int(run.get(f"n:{Outcome.FAILED.value}"))
        return f"run {run_id} finished with {failed} failed task(s) of {_int(run.get('selected'))}"
    if event.kind is EventKind.RUN_ABORTED:
        return f"run {run_id} was aborted" + (f": {run['reason']}" if run.get("reason") else "")
    if event.kind is EventKind.RUN_CANCELLED:
        return f"run {run_id} was cancelled" + (f": {run['reason']}" if run.get("reason") else "")
    if event.kind is EventKind.RUN_HELD:
        why = f" ({run['hold_reason']})" if run.get("hold_reason") else ""
        return f"run {run_id} is held{why}: its plan waits for an approval"
    which = f" of schedule {event.schedule}" if event.schedule else ""
    return f"no run claimed the nightly schedule slot {event.slot}{which}"


def commands(event: Event) -> dict[str, str]:
    """What the on-call types next (docs/operations.md has the rest)."""
    run_id = event.run_id
    if run_id is None:
        return {"runs": "sfs-cleanup runs list", "runbook": "docs/operations.md, 'Nightly run missing'"}
    found = {
        "show": f"sfs-cleanup runs show {run_id}",
        "export": f"sfs-cleanup audit export {run_id} --format csv --output {run_id}.csv",
    }
    if event.kind is EventKind.RUN_HELD:
        # The guard rails' commands: a release that holds runs has them.
        found |= {"approve": f"sfs-cleanup runs approve {run_id}", "cancel": f"sfs-cleanup runs cancel {run_id}"}
    elif event.kind is EventKind.RUN_FAILED:
        found["replay"] = f"sfs-cleanup runs replay {run_id} --wait"
    elif event.kind in RUN_ENDS:
        found["replay"] = f"sfs-cleanup runs replay {run_id} --include-aborted --wait"
    return found


def payload(event: Event, settings: Settings) -> dict[str, Any]:
    """The webhook's JSON body: the same for every attempt, so a receiver may compare them."""
    run = event.run
    body: dict[str, Any] = {
        "source": SOURCE,
        "event_id": event.key,
        "kind": event.kind.value,
        "summary": summary(event),
        "project_id": settings.project_id,
        "key_prefix": settings.key_prefix,
        "run_id": event.run_id,
        "status": run.get("status") or None,
        "reason": (run.get("reason") or "")[:_MAX_REASON_CHARS] or None,
        "hold_reason": run.get("hold_reason") or None,
        "dry_run": run.get("dry_run") == "1" if run else None,
        "trigger": run.get("trigger") or None,
        "requested_by": run.get("requested_by") or None,
        "schedule_slot": run.get("schedule_slot") or event.slot,
        "schedule": event.schedule,
        "parent_run": run.get("parent_run") or None,
        "selected": _int(run.get("selected")) if run.get("selected") else None,
        "outcomes": {o.value: _int(run.get(f"n:{o.value}")) for o in Outcome} if run else None,
        "created_at": _iso(_float(run.get("created_at"))) if run.get("created_at") else None,
        "ended_at": _iso(_float(run.get("finished_at"))) if run.get("finished_at") else None,
        "hint": next(iter(commands(event).values())),
        "commands": commands(event),
    }
    scrubbed: dict[str, Any] = scrub(body, secrets_of(settings))
    return scrubbed


def text(event: Event, settings: Settings) -> tuple[str, str]:
    """SMN's subject (under 512 bytes) and message: plain text for e-mail, SMS and chat.

    SMS refuses square brackets, so none are sent.
    """
    body = payload(event, settings)
    subject = _no_brackets(f"{SOURCE}: {body['summary']}")
    lines = [body["summary"], ""]
    for label, name in (
        ("run", "run_id"),
        ("status", "status"),
        ("reason", "reason"),
        ("held because", "hold_reason"),
        ("trigger", "trigger"),
        ("slot", "schedule_slot"),
        ("selected", "selected"),
        ("created", "created_at"),
        ("ended", "ended_at"),
        ("project", "project_id"),
    ):
        if body.get(name) not in (None, ""):
            lines.append(f"{label}: {body[name]}")
    if body["outcomes"]:
        lines.append("outcomes: " + ", ".join(f"{k} {v}" for k, v in body["outcomes"].items() if v))
    lines += [f"next: {command}" for command in body["commands"].values()]
    lines.append(f"event: {body['event_id']}")
    return _clip_bytes(subject, 500), _no_brackets("\n".join(lines))


# --- Secrets -----------------------------------------------------------------------------------


def secrets_of(settings: Settings) -> list[str]:
    """Every configured secret value long enough to be one (short ones would mask ordinary words)."""
    values = [
        s.get_secret_value()
        for s in (
            settings.auth_token,
            settings.iam_password,
            settings.secret_key,
            settings.security_token,
            settings.notify_webhook_url,
            settings.flower_basic_auth,
        )
        if s is not None
    ]
    if settings.notify_webhook_url is not None:  # a token in its query string, quoted alone
        values += [v for _, v in parse_qsl(urlsplit(settings.notify_webhook_url.get_secret_value()).query)]
    # Longest first: a URL is masked whole before the token inside it is looked for.
    return sorted({v for v in values if len(v) >= 6}, key=len, reverse=True)


def scrub(value: Any, secrets: list[str]) -> Any:
    """``value`` with every occurrence of a secret replaced by ``***``, at any depth."""
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, "***")
        return value
    if isinstance(value, Mapping):
        return {k: scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v, secrets) for v in value]
    return value


# --- Small helpers -------------------------------------------------------------------------------


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _int(value: str | None) -> int:
    try:
        return int(float(value or 0))
    except ValueError:
        return 0


def _float(value: str | None) -> float:
    try:
        return float(value or 0)
    except ValueError:
        return 0.0


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _no_brackets(value: str) -> str:
    return value.replace("[", "(").replace("]", ")")


def _clip_bytes(value: str, limit: int) -> str:
    data = value.encode()
    return value if len(data) <= limit else data[: limit - 3].decode(errors="ignore") + "..."
