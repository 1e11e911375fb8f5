"""The ledger's records are written by hand (``compact_json``): the text must be exactly what
``json.dumps(..., separators=(",", ":"))`` writes, since the audit chain hashes it and every
reader parses it back."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from worker.ledger.records import Attempt, FinalOutcome, Outcome, compact_json

texts = st.one_of(
    st.none(), st.text(), st.sampled_from(["", "ok", 'quote " back \\ slash', "line\nbreak", "é ü 中 😀"])
)
numbers = st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True))
values = st.one_of(texts, numbers, st.booleans())


def _reference(fields: list[tuple[str, Any]]) -> str:
    kept = {k: v for k, v in fields if v not in (None, "")}
    return json.dumps(kept, separators=(",", ":"))


@given(
    st.lists(st.tuples(st.sampled_from(["k", "op", "n", "t", "s", "m", "w", "why"]), values), unique_by=lambda f: f[0])
)
def test_compact_json_writes_what_json_dumps_writes(fields: list[tuple[str, Any]]) -> None:
    assert compact_json(fields) == _reference(fields)


@given(
    n=st.integers(1, 10**6),
    at=st.floats(0, 4e9),
    status=st.integers(0, 599),
    verdict=st.sampled_from(["ok", "sending", "unsent", "retryable", "fatal", "throttled"]),
    request_id=texts,
    code=texts,
    msg=texts,
    latency=st.floats(0, 1e6),
    worker=st.text(),
    op=st.sampled_from(["delete", "show"]),
)
def test_attempts_and_finals_read_back_as_written(
    n: int, at: float, status: int, verdict: str, request_id: str | None, code: str | None, msg: str | None,
    latency: float, worker: str, op: str,
) -> None:  # fmt: skip
    attempt = Attempt(n, at, status, verdict, request_id, code, msg, latency, worker, op)
    text = attempt.to_json()
    assert json.loads(text) == json.loads(json.dumps(json.loads(text)))  # valid JSON
    again = Attempt.from_json(text)
    assert (again.n, again.status, again.verdict, again.op, again.worker) == (n, status, verdict, op, worker)
    assert again.request_id == (request_id or None) and again.msg == (msg or None)
    assert math.isclose(again.at, round(at, 3), abs_tol=1e-9)
    final = FinalOutcome(Outcome.DELETED, at, n, status, code, msg, request_id, "why")
    assert FinalOutcome.from_json(final.to_json()) == FinalOutcome(
        Outcome.DELETED, round(at, 3), n, status, code or None, msg or None, request_id or None, "why"
    )
