"""Queue depth through kombu's own API (not the transport's private key names)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from kombu.exceptions import ChannelError

from worker.jobnames import DELETE_QUEUE

if TYPE_CHECKING:
    from celery import Celery


def declared_size(channel: Any, queue: str) -> int:
    try:
        return int(channel.queue_declare(queue=queue, passive=True).message_count)
    except ChannelError:
        # kombu's Redis transport keeps no list for an empty queue, and a passive declare of a
        # queue with no list is "not found": nothing waits in it.
        return 0


def read_queues(app: Celery, queues: Iterable[str]) -> tuple[dict[str, int], int]:
    """(jobs waiting per queue, jobs delivered and not acknowledged), through kombu's own API.

    kombu counts every priority sub-queue of the Redis transport and honours the app's transport
    options (key prefix, unacked key), so this agrees with what the workers consume.
    """
    with app.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1)  # one try: a scrape must not sit in kombu's retry loop
        channel = conn.default_channel
        depths = {queue: declared_size(channel, queue) for queue in queues}
        unacked = int(channel.client.hlen(channel.unacked_key))
    return depths, unacked


def broker_queue_depth(app: Celery, queue: str = DELETE_QUEUE) -> int:
    """Jobs waiting in one queue, priority sub-queues included (for the reconciler's "queue empty")."""
    depths, _ = read_queues(app, (queue,))
    return depths[queue]
