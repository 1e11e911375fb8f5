"""Server-side truth for tests and benchmarks: what the fake was asked and what it answered.

Only SFS task API calls are counted as API requests; IAM logins and SMN publishes are counted
apart, and the ``/_fake/*`` control routes not at all, so a test's own probing never skews its
assertions.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from sandbox.fakeapi.credentials import CredentialMeter
from sandbox.fakeapi.window import SlidingCount

DROPPED = "dropped"  # the status key of a request whose connection was closed unanswered


@dataclass(frozen=True, slots=True)
class Deletion:
    share_id: str
    task_id: str
    at: float  # epoch seconds, when it was accepted (after the latency)
    arrived: float | None = None  # epoch seconds, when the request reached the gateway
    project_id: str = ""  # the project whose task it was


@dataclass
class Stats:
    requests_total: int = 0
    by_method_status: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    busiest: SlidingCount = field(default_factory=SlidingCount)
    busiest_by_method: dict[str, SlidingCount] = field(default_factory=dict)
    first_request_at: float | None = None
    last_request_at: float | None = None
    in_flight: int = 0
    max_in_flight: int = 0
    deletes_accepted: int = 0
    duplicate_deletes: int = 0
    duplicate_task_ids: list[str] = field(default_factory=list)
    duplicates: list[Deletion] = field(default_factory=list)  # each duplicate DELETE, with its time
    doing_deletes: int = 0
    answered_429: int = 0
    auth_failures: int = 0
    injected: Counter[str] = field(default_factory=Counter)  # fault name -> answers it caused
    iam_requests: int = 0
    iam_by_status: Counter[str] = field(default_factory=Counter)
    tokens_issued: int = 0
    deleted: list[Deletion] = field(default_factory=list)
    smn_requests: int = 0
    smn_by_status: Counter[str] = field(default_factory=Counter)
    smn_published: list[dict[str, Any]] = field(default_factory=list)  # each accepted publish
    # Each answered task API call, when FakeConfig.record_request_ids: method, task, status, request ID.
    answered: list[dict[str, Any]] = field(default_factory=list)
    # Per credential (AK, or a token's digest): requests, busiest second, 429s, projects asked.
    credentials: CredentialMeter = field(default_factory=CredentialMeter)
    deleted_by_project: Counter[str] = field(default_factory=Counter)  # accepted DELETEs per project

    def arrive(self, method: str, mono_now: float, epoch_now: float) -> None:
        self.requests_total += 1
        self.busiest.add(mono_now)
        window = self.busiest_by_method.get(method)
        if window is None:
            window = self.busiest_by_method[method] = SlidingCount()
        window.add(mono_now)
        if self.first_request_at is None:
            self.first_request_at = epoch_now
        self.last_request_at = epoch_now
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def answer(self, method: str, status: int | str) -> None:
        self.in_flight -= 1
        self.by_method_status[method][str(status)] += 1
        if status == 429:
            self.answered_429 += 1

    def snapshot(self) -> dict[str, Any]:
        """The JSON of ``GET /_fake/stats``."""
        return {
            "requests_total": self.requests_total,
            "requests_by_method_status": {
                method: dict(sorted(counts.items())) for method, counts in sorted(self.by_method_status.items())
            },
            "deletes_accepted": self.deletes_accepted,
            "deleted_count": len(self.deleted),
            "duplicate_deletes": self.duplicate_deletes,
            "duplicate_task_ids": list(self.duplicate_task_ids),
            "duplicates": [{"share_id": d.share_id, "task_id": d.task_id, "at": d.at} for d in self.duplicates],
            "doing_deletes": self.doing_deletes,
            "answered_429": self.answered_429,
            "dropped": sum(counts.get(DROPPED, 0) for counts in self.by_method_status.values()),
            "injected_faults": dict(self.injected),
            "auth_failures": self.auth_failures,
            "busiest_second": self.busiest.peak,
            "busiest_second_by_method": {
                method: window.peak for method, window in sorted(self.busiest_by_method.items())
            },
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "first_request_at": self.first_request_at,
            "last_request_at": self.last_request_at,
            "iam_requests": self.iam_requests,
            "iam_by_status": dict(self.iam_by_status),
            "tokens_issued": self.tokens_issued,
            "smn_requests": self.smn_requests,
            "smn_by_status": dict(self.smn_by_status),
            "smn_published": len(self.smn_published),
            "by_credential": self.credentials.snapshot(),
            "deleted_by_project": dict(self.deleted_by_project),
        }

    def deleted_records(self) -> list[dict[str, Any]]:
        """The JSON of ``GET /_fake/deleted``: every accepted DELETE, oldest first."""
        return [
            {"share_id": d.share_id, "task_id": d.task_id, "at": d.at, "arrived": d.arrived, "project_id": d.project_id}
            for d in self.deleted
        ]

    def reset(self) -> None:
        """Clear the counters; requests still being answered keep their place in ``in_flight``."""
        in_flight = self.in_flight
        fresh = Stats()
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(fresh, name))
        self.in_flight = in_flight
