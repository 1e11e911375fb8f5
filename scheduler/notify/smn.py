"""Huawei Cloud SMN (Simple Message Notification): publish a text message to one topic.

``POST {endpoint}/v2/{project_id}/notifications/topics/{topic_urn}/publish`` with
``{"subject": ..., "message": ...}``; SMN answers 200 with ``request_id`` and ``message_id``,
and delivers the message to the topic's subscribers (e-mail, SMS, HTTP, chat).

Authenticated exactly like the SFS Turbo calls (:func:`worker.api.auth.build_auth`: a token,
an IAM login shared by the fleet through Redis, or AK/SK signing). The topic URN goes into the
path percent-encoded (``:`` as ``%3A``), as Huawei's SDK sends path parameters and signs them.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import httpx
import redis

from scheduler.notify.delivery import (
    EVENT_HEADER,
    Answer,
    Delivery,
    deliver,
    http_client,
    read_answer,
    retry_policy,
    send_budget_s,
)
from scheduler.notify.events import Event, text
from worker.api.auth import AuthError, build_auth
from worker.settings import Settings


class SmnTarget:
    name = "smn"

    def __init__(
        self, settings: Settings, redis_client: redis.Redis | None, *, transport: httpx.BaseTransport | None = None
    ) -> None:
        assert settings.notify_smn_endpoint and settings.notify_smn_topic_urn and settings.project_id
        self._settings = settings
        self._redis = redis_client
        self._client = http_client(settings, transport)
        self._policy = retry_policy(settings)
        self._auth: httpx.Auth | None = None
        self.url = (
            f"{settings.notify_smn_endpoint}/v2/{quote(settings.project_id, safe='')}"
            f"/notifications/topics/{quote(settings.notify_smn_topic_urn, safe='')}/publish"
        )

    def __repr__(self) -> str:
        return f"SmnTarget({self._settings.notify_smn_topic_urn!r})"

    def _credentials(self) -> httpx.Auth:
        if self._auth is None:
            # The IAM login, if that is the mode, goes through this client too: same timeouts.
            self._auth = build_auth(self._settings, self._redis, http=self._client)
        return self._auth

    def send(self, event: Event) -> Delivery:
        try:
            auth = self._credentials()
        except AuthError as exc:  # no credentials, or a project missing: a setting to fix
            return Delivery(False, 0, None, f"AuthError: {exc}")
        subject, message = text(event, self._settings)
        body = json.dumps({"subject": subject, "message": message}, ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json;charset=UTF-8", EVENT_HEADER: event.key}
        return deliver(
            lambda: read_answer(self._client.stream("POST", self.url, content=body, headers=headers, auth=auth)),
            self._policy,
            budget_s=send_budget_s(self._settings),
            describe=_ids,
        )

    def close(self) -> None:
        self._client.close()


def _ids(answer: Answer) -> dict[str, Any]:
    try:
        data = json.loads(answer.body)
    except (ValueError, UnicodeDecodeError):
        data = {}
    data = data if isinstance(data, dict) else {}
    return {
        "request_id": str(data.get("request_id") or answer.headers.get("x-request-id") or "")[:128] or None,
        "message_id": str(data.get("message_id") or "")[:128] or None,
    }
