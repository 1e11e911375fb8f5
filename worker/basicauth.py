"""Flower's basic-auth value, ``user:password[,user2:password2]``: checked by the settings, used by
:mod:`worker.flower`."""

from __future__ import annotations


def parse_basic_auth(value: str) -> list[str]:
    """``user:password[,user2:password2]`` as Flower's list; ``ValueError`` naming what is wrong."""
    credentials = [part.strip() for part in value.split(",") if part.strip()]
    if not credentials:
        raise ValueError("is empty; want user:password")
    for number, credential in enumerate(credentials, start=1):
        user, colon, password = credential.partition(":")
        if not colon or not user or not password:
            where = f"entry {number}" if len(credentials) > 1 else "the value"
            raise ValueError(f"{where} is not user:password (a user name, a colon, a password)")
    return credentials
