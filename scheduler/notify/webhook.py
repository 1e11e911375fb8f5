"""The generic JSON webhook: ``POST`` of :func:`~scheduler.notify.events.payload` to one URL.

The URL is a secret (chat and incident tools put their token in it): it is held as a
``SecretStr``, and only its scheme and host ever appear in a repr, a log line or the audit.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr

from scheduler.notify.delivery import EVENT_HEADER, Delivery, deliver, http_client, read_answer, retry_policy
from scheduler.notify.delivery import send_budget_s as _budget
from scheduler.notify.events import Event, payload
from worker.settings import Settings


class WebhookTarget:
    name = "webhook"

    def __init__(self, url: SecretStr, settings: Settings, *, transport: httpx.BaseTransport | None = None) -> None:
        self._url = url
        self._settings = settings
        self._client = http_client(settings, transport)
        self._policy = retry_policy(settings)

    def __repr__(self) -> str:
        parts = urlsplit(self._url.get_secret_value())
        return f"WebhookTarget({parts.scheme}://{parts.hostname or '?'}/***)"

    def send(self, event: Event) -> Delivery:
        body = json.dumps(payload(event, self._settings), separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", EVENT_HEADER: event.key}
        url = self._url.get_secret_value()
        return deliver(
            lambda: read_answer(self._client.stream("POST", url, content=body, headers=headers)),
            self._policy,
            budget_s=_budget(self._settings),
        )

    def close(self) -> None:
        self._client.close()
