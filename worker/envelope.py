"""A guard in front of Celery for messages that are not well-formed task messages.

Celery builds a request from every message it takes; a body that is not ``[args, kwargs,
embed]``, or a missing task ID, raises inside the consumer and stops the whole worker, and the
message, restored, stops the next one too. The guard checks the envelope first: a bad message is
acknowledged, reported through ``on_refused``, and never reaches the task.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from celery import Celery, Task
from kombu.exceptions import DecodeError

log = structlog.get_logger(__name__)

_MAX_ID_CHARS = 255


def envelope_problem(message: Any, body: Any, *, allow_eta: bool = False) -> str | None:
    """Why a message cannot be a protocol 2 task message, or ``None`` if it can.

    Checked before Celery builds a request from it: a body that is not ``[args, kwargs, embed]``
    (a JSON object, a string) or a missing task ID would otherwise stop the whole worker.
    """
    headers = message.headers
    if body is not None:
        return "protocol 1 task messages are not accepted; send Celery protocol 2 (task name in the headers)"
    task_id = headers.get("id")
    if not isinstance(task_id, str) or not task_id or len(task_id) > _MAX_ID_CHARS:
        return "header 'id' must be a non-empty string (the message ID)"
    limits = headers.get("timelimit")
    if limits is not None and not (
        isinstance(limits, list | tuple)
        and len(limits) == 2
        and all(v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in limits)
    ):
        return "header 'timelimit' must be [hard, soft] seconds or null"
    if headers.get("eta") is not None and not allow_eta:
        # A held message is delivered again after every visibility timeout (Redis broker): a
        # delayed trigger would start a run per redelivery. Triggers run now; schedule elsewhere.
        return "delayed triggers (eta/countdown) are not accepted; send the message when the run should start"
    if not isinstance(headers.get("retries", 0) or 0, int):
        return "header 'retries' must be an integer"
    if headers.get("shadow") is not None and not isinstance(headers.get("shadow"), str):
        return "header 'shadow' must be a string or null"
    try:
        payload = message.payload
    except DecodeError as exc:
        return f"body is not valid {message.content_type or 'JSON'}: {exc}"
    if not (isinstance(payload, list | tuple) and len(payload) == 3):
        return "body must be a JSON array [args, kwargs, embed] (Celery protocol 2)"
    args, kwargs, embed = payload
    if not isinstance(args, list | tuple):
        return "body[0] (positional arguments) must be an array"
    if not isinstance(kwargs, dict):
        return "body[1] (keyword arguments) must be an object"
    if embed is not None and not isinstance(embed, dict):
        return "body[2] (callbacks, chain, chord) must be an object or null"
    return None


Refused = Callable[[str, str | None, str], None]  # (task name, message ID, problem)


def guarded(on_refused: Refused, *, allow_eta: bool = False) -> Callable[..., Callable[..., Any]]:
    """A Celery ``Strategy`` (pass it as ``@app.task(Strategy=...)``): the default, behind the guard."""

    def strategy(task: Task, app: Celery, consumer: Any, **kwargs: Any) -> Callable[..., Any]:
        from celery.worker.strategy import default

        handle = default(task, app, consumer, **kwargs)

        def on_message(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any) -> Any:
            problem = envelope_problem(message, body, allow_eta=allow_eta)
            if problem is None:
                return handle(message, body, ack, reject, callbacks, **kw)
            headers = message.headers if isinstance(message.headers, dict) else {}
            message_id = headers.get("id")
            on_refused(task.name, message_id if isinstance(message_id, str) else None, problem)
            message.ack_log_error(log, consumer.connection_errors)
            return None

        return on_message

    return strategy
