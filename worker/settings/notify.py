"""The notification settings (:mod:`scheduler.notify`): where runs that need a human are told."""

from __future__ import annotations

import re
from typing import Any, Final

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings

from worker.settings.base import ENV_PREFIX, CommaList, split_commas

#: What ``SFS_CLEANUP_NOTIFY_EVENTS`` may name (``scheduler.notify.events.EventKind`` has the same).
NOTIFY_EVENT_KINDS: Final = ("run_failed", "run_aborted", "run_cancelled", "run_held", "nightly_missed")
_SMN_TOPIC_URN = re.compile(r"urn:smn:[a-z0-9-]{1,64}:([0-9a-f]{32}):[A-Za-z0-9][A-Za-z0-9_-]{0,255}")


class NotifySettings(BaseSettings):
    """The ``SFS_CLEANUP_NOTIFY_*`` fields of :class:`worker.settings.Settings`."""

    notify_webhook_url: SecretStr | None = Field(
        None, description="POST a JSON event here (secret: such URLs often carry a token); unset: no webhook."
    )
    notify_smn_endpoint: str | None = Field(
        None, description="SMN endpoint, e.g. https://smn.ap-southeast-1.myhuaweicloud.com (with the topic URN)."
    )
    notify_smn_topic_urn: str | None = Field(
        None, description="SMN topic to publish to, urn:smn:REGION:PROJECT_ID:NAME; unset: no SMN."
    )
    notify_timeout_s: float = Field(10.0, gt=0, le=60, description="Seconds one notification request may take.")
    notify_retries: int = Field(3, ge=0, le=10, description="Retries of a notification within one reconciler pass.")
    notify_events: CommaList = Field(
        default_factory=lambda: list(NOTIFY_EVENT_KINDS),
        description="Events to send: run_failed, run_aborted, run_cancelled, run_held, nightly_missed.",
    )

    @field_validator("notify_events", mode="before")
    @classmethod
    def _notify_list(cls, value: Any) -> Any:
        return split_commas(value)

    @field_validator("notify_webhook_url")
    @classmethod
    def _webhook(cls, value: SecretStr | None) -> SecretStr | None:
        # The message never quotes the URL: it may carry a token.
        if value is not None and not value.get_secret_value().startswith(("https://", "http://")):
            raise ValueError("must start with https:// (or http:// for a local receiver)")
        return value

    @field_validator("notify_smn_endpoint")
    @classmethod
    def _smn_endpoint(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("must start with https:// (or http:// for a local fake)")
        return value.rstrip("/") if value is not None else None

    @field_validator("notify_smn_topic_urn")
    @classmethod
    def _smn_topic(cls, value: str | None) -> str | None:
        if value is not None and not _SMN_TOPIC_URN.fullmatch(value):
            raise ValueError("must be a topic URN, urn:smn:REGION:PROJECT_ID:NAME (the console shows it)")
        return value

    @field_validator("notify_events", mode="after")
    @classmethod
    def _notify_events(cls, value: list[str]) -> list[str]:
        wrong = [v for v in value if v not in NOTIFY_EVENT_KINDS]
        if wrong:
            raise ValueError(
                f"unknown event(s) {', '.join(map(repr, wrong))}; allowed: {', '.join(NOTIFY_EVENT_KINDS)}"
            )
        return value

    def _smn_problems(self, project_id: str | None) -> list[str]:
        P = ENV_PREFIX  # noqa: N806 - reads better in the messages below
        if (self.notify_smn_endpoint is None) != (self.notify_smn_topic_urn is None):
            return [f"{P}NOTIFY_SMN_TOPIC_URN: SMN needs both {P}NOTIFY_SMN_ENDPOINT and {P}NOTIFY_SMN_TOPIC_URN"]
        match = _SMN_TOPIC_URN.fullmatch(self.notify_smn_topic_urn or "")
        if match is None:
            return []
        if project_id is None:
            return [f"{P}NOTIFY_SMN_TOPIC_URN: publishing to SMN needs {P}PROJECT_ID (the topic's project)"]
        if match.group(1) != project_id:
            # The publish call is authorised for the configured project; a topic of another
            # project would answer "not found" on every run end, found only when it matters.
            return [f"{P}NOTIFY_SMN_TOPIC_URN: the topic's project is not {P}PROJECT_ID"]
        return []
