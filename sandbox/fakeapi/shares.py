"""The fake's file systems: what ``GET /v1/{project_id}/sfs-turbo/shares/detail`` lists.

Several projects, each with its shares in creation order. The shares of the inventory's project
start ACTIVE (status ``200``) with names ``share-0``, ``share-1``...; tests add more (in any
project, with any status) through :meth:`ShareCatalog.add` (``POST /_fake/shares``). Only the
inventory's project has tasks: the task calls of another project answer a parameter error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Final

from sandbox.fakeapi.tasks import format_time

#: The documented status codes (strings on the wire); 200 is the only usable one.
STATUS_CODES: Final = ("100", "200", "300", "303", "400", "800")
DEFAULT_ENTERPRISE_PROJECT: Final = "0"  # Huawei's "default" enterprise project


@dataclass(slots=True)
class Share:
    """One file system, in the fields of the API's ShareInfo that the cleanup reads."""

    id: str
    name: str
    status: str = "200"
    enterprise_project_id: str = DEFAULT_ENTERPRISE_PROJECT
    created_at: str = ""
    share_type: str = "STANDARD"
    sub_status: str = ""

    def to_api(self) -> dict[str, Any]:
        return asdict(self) | {"share_proto": "NFS", "size": "1228.8", "avail_capacity": "1228.8"}


class ShareCatalog:
    """Every project's shares, in order. Not thread-safe: lives on the fake's event loop."""

    def __init__(self, project_id: str, share_ids: list[str]) -> None:
        now = format_time(datetime.now(UTC))
        self._projects: dict[str, dict[str, Share]] = {project_id: {}}
        for index, share_id in enumerate(share_ids):
            self._projects[project_id][share_id] = Share(share_id, f"share-{index}", created_at=now)

    def add(self, project_id: str, record: dict[str, Any]) -> Share:
        """Add (or replace) one share; ``record`` has ``id`` and ``name``, the rest optional."""
        if not isinstance(record, dict) or not record.get("id") or not isinstance(record.get("name"), str):
            raise ValueError("a share needs an 'id' and a 'name'")
        status = str(record.get("status", "200"))
        if status not in STATUS_CODES:
            raise ValueError(f"status must be one of {', '.join(STATUS_CODES)}")
        known = set(Share.__slots__)
        unknown = sorted(set(record) - known)
        if unknown:
            raise ValueError(f"unknown share field(s): {', '.join(unknown)}")
        fields = {"created_at": format_time(datetime.now(UTC))} | record | {"status": status}
        share = Share(**{key: str(value) for key, value in fields.items()})
        self._projects.setdefault(project_id, {})[share.id] = share
        return share

    def page(self, project_id: str, offset: int, limit: int) -> tuple[list[Share], int]:
        """One page of a project's shares, and how many it has in all (none for an unknown one)."""
        shares = list(self._projects.get(project_id, {}).values())
        return shares[offset : offset + limit], len(shares)

    def records(self, project_id: str | None = None) -> dict[str, list[dict[str, Any]]]:
        projects = [project_id] if project_id is not None else list(self._projects)
        return {pid: [share.to_api() for share in self._projects.get(pid, {}).values()] for pid in projects}
