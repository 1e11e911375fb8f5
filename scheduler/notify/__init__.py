"""Notifications when a run needs a human: failed, aborted, cancelled or held runs, and a missed
nightly slot, sent once per event to each configured target (a JSON webhook, an SMN topic).

The reconciler calls :func:`notify_pending` every minute. :mod:`.events` finds what to send and
words it, :mod:`.outbox` makes each (event, target) go out once however many passes run,
:mod:`.delivery` is the HTTP with timeout and retries that :mod:`.webhook` and :mod:`.smn` share.
"""

from scheduler.notify.delivery import Delivery, Target
from scheduler.notify.events import Event, EventKind
from scheduler.notify.pending import notify_pending

__all__ = ["Delivery", "Event", "EventKind", "Target", "notify_pending"]
