"""Structured logs (structlog) for the workers and the CLI, with secrets masked.

One processor chain serves structlog's own events and the standard library's (Celery, kombu,
httpx), so every line is JSON (or readable console output) with the run and task bound.
"""

from __future__ import annotations

import logging
import logging.config
import re
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

# "sk" (a secret key) only as a whole key or a key's last word: a bare suffix match masked
# ``task=``, ``disk=`` and the like, which are what an operator reads a log line for.
_SENSITIVE_KEYS = re.compile(r"(token|password|secret|authorization|signature|x-auth|credential|(^|[_\-.])sk$)", re.I)
# A token or signature inside free text: X-Auth-Token values, SDK signatures, Basic auth in URLs.
_SENSITIVE_TEXT = [
    (re.compile(r"(?i)(x-auth-token[\"':= ]+)[^\s\"',}]+"), r"\1***"),
    (re.compile(r"(?i)(x-subject-token[\"':= ]+)[^\s\"',}]+"), r"\1***"),
    (re.compile(r"(?i)(x-security-token[\"':= ]+)[^\s\"',}]+"), r"\1***"),
    (re.compile(r"(?i)(Signature=)[0-9a-f]+"), r"\1***"),
    (re.compile(r"(?i)(://[^:/@\s]*:)[^@/\s]+@"), r"\1***@"),
]
_extra_secrets: list[str] = []


def register_secret(value: str | None) -> None:
    """Mask this exact value wherever it appears in a log line (settings secrets, tokens)."""
    if value and len(value) >= 6 and value not in _extra_secrets:
        _extra_secrets.append(value)


def _mask_text(text: str) -> str:
    for pattern, repl in _SENSITIVE_TEXT:
        text = pattern.sub(repl, text)
    for secret in _extra_secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


def _mask(value: Any, depth: int = 0) -> Any:
    if depth > 6:
        return value
    if isinstance(value, str):
        return _mask_text(value)
    if isinstance(value, Mapping):
        return {
            k: ("***" if isinstance(k, str) and _SENSITIVE_KEYS.search(k) else _mask(v, depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_mask(v, depth + 1) for v in value)
    return value


def redact(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor: mask secret-looking keys at any depth and secrets inside text."""
    for key in list(event_dict):
        if _SENSITIVE_KEYS.search(key) and key not in ("event",):
            event_dict[key] = "***"
        else:
            event_dict[key] = _mask(event_dict[key])
    return event_dict


def _shared() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact,
    ]


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {
                "structured": {
                    "()": structlog.stdlib.ProcessorFormatter,
                    "processors": [structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
                    "foreign_pre_chain": _shared(),
                }
            },
            "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "structured"}},
            "root": {"handlers": ["stderr"], "level": level},
            # httpx logs every request at INFO, urllib3 (the client's wire) at DEBUG; the audit
            # already records each one.
            "loggers": {name: {"level": "WARNING"} for name in ("httpx", "httpcore", "urllib3")},
        }
    )
    structlog.configure(
        processors=[*_shared(), structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def setup_process_logging(settings: Any, fmt: str | None = None) -> None:
    """Logging for one process (a worker, the CLI): the settings' level and format (or ``fmt``:
    the CLI's is always console), to stderr, with every configured secret value masked wherever
    it appears."""
    configure_logging(settings.log_level, fmt or settings.log_format)
    for secret in (
        settings.auth_token,
        settings.iam_password,
        settings.secret_key,
        settings.security_token,
        settings.notify_webhook_url,
    ):
        if secret is not None:
            register_secret(secret.get_secret_value())
