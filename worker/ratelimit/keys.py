"""The limiter's Redis key: one hash per quota scope (the gateway throttles per project and host)."""

from __future__ import annotations

from typing import Final
from urllib.parse import urlsplit

__all__ = ["limiter_key"]

_DEFAULT_PORTS: Final = {"https": 443, "http": 80}


def limiter_key(prefix: str, project_id: str, endpoint: str) -> str:
    """The limiter's Redis key: ``{prefix}:rl:{project_id}:{host}:{port}``.

    The scope is the endpoint's host and port (the gateway's quota scope); path, scheme case and
    a default port do not split a budget. An endpoint without a scheme is taken as https.
    """
    if not prefix or not project_id:
        raise ValueError("prefix and project_id must not be empty")
    parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    host = parts.hostname
    if not host:
        raise ValueError(f"endpoint {endpoint!r} has no host")
    port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
    if port is None:
        raise ValueError(f"endpoint {endpoint!r}: no port and unknown scheme {parts.scheme!r}")
    if ":" in host:
        host = f"[{host}]"
    return f"{prefix}:rl:{project_id}:{host}:{port}"
