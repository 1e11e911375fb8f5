"""SMN's publish call, as far as the product uses it.

The call is ``POST /v2/{project_id}/notifications/topics/{topic_urn}/publish``. Documented: a
topic URN ``urn:smn:REGION:PROJECT_ID:NAME``; a JSON body with ``message`` (UTF-8, at most
256 KB) and an optional ``subject`` (under 512 bytes); 200 with ``request_id`` and
``message_id``; errors as ``{"request_id", "code", "message"}``, ``SMN.0005`` for an invalid
topic URN and ``SMN.0006`` "Topic not found.". The codes for a bad body and for the injected
server error are this fake's choice (the reference lists them without saying which call uses them).

Every topic of the fake's project and region exists; nothing is delivered to subscribers, each
accepted message is recorded for tests to read (``GET /_fake/smn``, ``FakeApi.smn_messages()``).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any, Final

_URN: Final = re.compile(r"urn:smn:([a-z0-9-]{1,64}):([0-9a-f]{32}):([A-Za-z0-9][A-Za-z0-9_-]{0,255})")
MAX_MESSAGE_BYTES: Final = 256 * 1024
MAX_SUBJECT_BYTES: Final = 512
INVALID_URN: Final = ("SMN.0005", "Parameter: TopicUrn is invalid.")
NOT_FOUND: Final = ("SMN.0006", "Topic not found.")
BAD_MESSAGE: Final = ("SMN.0004", "Parameter: message is invalid.")  # the fake's choice
SYSTEM_ERROR: Final = ("SMN.0001", "System error.")  # the fake's choice


@dataclass(frozen=True, slots=True)
class Published:
    status: int
    body: dict[str, Any]
    record: dict[str, Any] | None = None  # what was published, when it was


def publish(
    *, path_project: str, topic_urn: str, body: Any, project_id: str, region: str, request_id: str
) -> Published:
    """Judge one publish call (already authenticated); record it when it is accepted."""
    match = _URN.fullmatch(topic_urn)
    if match is None:
        return _error(400, INVALID_URN, request_id)
    urn_region, urn_project, _name = match.groups()
    if path_project != project_id or urn_project != project_id or urn_region != region:
        return _error(404, NOT_FOUND, request_id)
    if not isinstance(body, dict):
        return _error(400, BAD_MESSAGE, request_id)
    message, subject = body.get("message"), body.get("subject")
    if not isinstance(message, str) or not message or len(message.encode()) > MAX_MESSAGE_BYTES:
        return _error(400, BAD_MESSAGE, request_id)
    if subject is not None and (not isinstance(subject, str) or len(subject.encode()) >= MAX_SUBJECT_BYTES):
        return _error(400, BAD_MESSAGE, request_id)
    message_id = secrets.token_hex(16)
    record = {"topic_urn": topic_urn, "subject": subject, "message": message, "message_id": message_id}
    return Published(200, {"request_id": request_id, "message_id": message_id}, record)


def system_error(request_id: str) -> Published:
    return _error(500, SYSTEM_ERROR, request_id)


def _error(status: int, error: tuple[str, str], request_id: str) -> Published:
    return Published(status, {"request_id": request_id, "code": error[0], "message": error[1]})
