"""One notification pass: find what needs a human, send each event once to each target.

The reconciler (``sfs.reconcile``, every minute) calls :func:`notify_pending`. Every pass looks
at the same Redis state, so passes may repeat, overlap or run on several schedulers: the
:class:`~scheduler.notify.outbox.Outbox` claim decides who sends. A target that fails is
recorded in the audit (``notification_failed``), never raised, and does not stop the others;
the event is tried again by later passes, up to ``max_passes``, then ``notification_gave_up``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import Final

import structlog

from scheduler.context import Context
from scheduler.notify.delivery import Delivery, Target, send_budget_s
from scheduler.notify.events import RUN_ENDS, Event, missed_slot_events, run_events, scrub, secrets_of
from scheduler.notify.outbox import Outbox, Released
from scheduler.notify.smn import SmnTarget
from scheduler.notify.webhook import WebhookTarget
from worker.settings import Settings

log = structlog.get_logger(__name__)

#: Failed passes (about one a minute) before an event is given up for a target.
MAX_PASSES: Final = 30
#: Run ends this long before a target was first configured are still sent to it; older ones
#: are history, not news (turning notifications on must not replay the last 50 runs).
LOOKBACK_S: Final = 3600.0
#: No new send to a target starts once it has taken this long in one pass: the control worker
#: has triggers to serve, and what is left is for the next pass, a minute later.
PASS_BUDGET_S: Final = 30.0


def configured_targets(ctx: Context) -> list[Target]:
    """The targets the settings name; none when nothing is configured."""
    settings = ctx.settings
    targets: list[Target] = []
    if settings.notify_webhook_url is not None:
        targets.append(WebhookTarget(settings.notify_webhook_url, settings))
    if settings.notify_smn_topic_urn is not None:
        targets.append(SmnTarget(settings, ctx.redis))
    return targets


def notify_pending(
    ctx: Context,
    now: datetime | None = None,
    *,
    missed_slots: Sequence[tuple[datetime, str | None]] = (),
    targets: Sequence[Target] | None = None,
    max_passes: int = MAX_PASSES,
    budget_s: float = PASS_BUDGET_S,
) -> dict[str, int]:
    """Send what is pending; returns how many sends succeeded, failed, and how many were
    already done or being done by another pass (``skipped``).

    ``missed_slots`` are the schedule slots past their catch-up window that no run claimed, with
    their schedule's name (:func:`scheduler.service.unclaimed_nightly_slots`). ``targets``
    replaces the configured ones (tests); those built here are closed at the end.
    """
    at = now.timestamp() if now is not None else time.time()
    counts = {"sent": 0, "failed": 0, "skipped": 0}
    # Kept current whether or not anything is configured: it dates when the schedule was enabled.
    missed = missed_slot_events(ctx.audit, ctx.settings, missed_slots, at)
    chosen = configured_targets(ctx) if targets is None else list(targets)
    try:
        if not chosen:
            return counts
        found = run_events(ctx.audit, ctx.settings.notify_events)
        events = sorted([*found, *missed], key=lambda e: e.at)
        outbox = Outbox(
            ctx.redis,
            ctx.audit.keys,
            claim_ttl_s=send_budget_s(ctx.settings) + 30,
            keep_s=ctx.audit.retention_s,
            max_passes=max_passes,
        )
        since = {target.name: outbox.since(target.name, at) for target in chosen}
        spent = dict.fromkeys(since, 0.0)
        # Event by event, each to every target: a slow target delays the others by one send at
        # most, and once it has used its budget it waits for the next pass.
        for event in events:
            for target in chosen:
                if event.kind in RUN_ENDS and event.at < since[target.name] - LOOKBACK_S:
                    continue
                if spent[target.name] > budget_s:
                    continue
                started = time.monotonic()
                counts[_send_once(ctx, outbox, target, event)] += 1
                spent[target.name] += time.monotonic() - started
        return counts
    finally:
        if targets is None:
            for target in chosen:
                target.close()


def _send_once(ctx: Context, outbox: Outbox, target: Target, event: Event) -> str:
    claim = outbox.claim(event.key, target.name)
    if claim is None:
        return "skipped"
    try:
        delivery = target.send(event)
    except Exception as exc:  # a bug in one target must not keep the others from being told
        log.exception("notification target raised", target=target.name, event_id=event.key)
        delivery = Delivery(False, 0, None, f"{type(exc).__name__}: {str(exc)[:200]}")
    secrets = secrets_of(ctx.settings)
    fields = _audit_fields(ctx.settings, target, event, delivery)
    if delivery.ok:
        if not outbox.sent(claim):
            log.warning("a notification's claim lapsed while it was sent", target=target.name, event_id=event.key)
        ctx.audit.event("notification_sent", **fields)
        log.info("notification sent", **fields)
        return "sent"
    released, tries = outbox.release(claim)
    fields |= {"failed_passes": tries, "error": scrub(delivery.error or "", secrets)}
    ctx.audit.event("notification_failed", **fields)
    log.warning("notification failed", **fields)
    if released is Released.GAVE_UP:
        ctx.audit.event("notification_gave_up", **fields)
        log.error("notification given up", **fields)
    return "failed"


def _audit_fields(settings: Settings, target: Target, event: Event, delivery: Delivery) -> dict[str, object]:
    fields: dict[str, object] = {
        "target": target.name,
        "event_id": event.key,
        "event_kind": event.kind.value,
        "run_id": event.run_id or "",
        "slot": event.slot or "",
        "attempts": delivery.attempts,
        "http_status": delivery.status or 0,
    }
    if delivery.request_id:
        fields["request_id"] = delivery.request_id
    if delivery.message_id:
        fields["message_id"] = delivery.message_id
    return dict(scrub(fields, secrets_of(settings)))
