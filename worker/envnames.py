"""``SFS_CLEANUP_`` variables that no setting has: refused, with the closest real name.

Pydantic ignores a variable it has no field for. For a tool that deletes, that turns a typo in a
cap or a protection list (``SFS_CLEANUP_MAX_DELETION``, ``SFS_CLEANUP_PROTECTED_SHARES``) into a
run without the cap or the protection, so an unknown name stops start-up like a bad value does.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Mapping
from typing import Final

#: Names with the prefix that are not settings but are set on purpose, by something else.
NOT_SETTINGS: Final = frozenset(
    {
        # The test suite's external Redis (tests/conftest.py, sandbox/redis_server.py). It stays in
        # the environment of a test session, so every CLI and worker the tests start inherits it.
        "SFS_CLEANUP_TEST_REDIS_URL",
    }
)

# Kubernetes gives every pod <SERVICE>_SERVICE_HOST, <SERVICE>_PORT_6379_TCP and the like for
# each Service of its namespace: ours are named sfs-cleanup-*, so those land under our prefix.
# <SERVICE>_PORT alone is one of them too (tcp://10.0.0.7:6379), but also what a typo of
# METRICS_PORT looks like: its value tells them apart (and is never printed).
_SERVICE_LINK = re.compile(r"_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT_\d+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)$")
_SERVICE_LINK_PORT = re.compile(r"_PORT$")
_SERVICE_ADDRESS = re.compile(r"(tcp|udp|sctp)://\S+:[0-9]+")
_SERVICE_LINK_HINT = "a Kubernetes service link? set enableServiceLinks: false in the pod spec"


def unknown_variables(
    variables: Mapping[str, str | None], settings: Collection[str], *, prefix: str, where: str = ""
) -> list[str]:
    """One line for each of ``variables`` (name: value) that has ``prefix`` but is not in
    ``settings`` (full variable names) nor in :data:`NOT_SETTINGS`; ``where`` says where it was
    found (" in .env"). No line quotes a value: it may be a secret."""
    known = {name.upper() for name in settings}
    suffixes = {name[len(prefix) :]: name for name in known}
    lines = []
    for name in sorted(variables):
        upper = name.upper()  # settings are read case-insensitively, so their names are matched so
        if not upper.startswith(prefix) or upper in known or upper in NOT_SETTINGS:
            continue
        lines.append(f"{name}{where} is not a setting{_hint(upper, variables[name] or '', prefix, suffixes)}")
    return lines


def _hint(name: str, value: str, prefix: str, suffixes: Mapping[str, str]) -> str:
    if _SERVICE_LINK.search(name) or (_SERVICE_LINK_PORT.search(name) and _SERVICE_ADDRESS.fullmatch(value)):
        return f" ({_SERVICE_LINK_HINT})"
    # Compared without the prefix, which every name shares and which would make all look alike.
    close = difflib.get_close_matches(name[len(prefix) :], suffixes, n=1, cutoff=0.6)
    if close:
        return f": did you mean {suffixes[close[0]]}?"
    return " (docs/settings.md lists every setting)"
