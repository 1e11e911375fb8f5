"""Helpers for the authentication and secret-handling tests: a cluster per auth mode, manifests,
a complete Redis dump (every key, every type, kombu messages decoded), a pub/sub recorder, and
the encoded forms a leaked secret could take."""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis

from sandbox.fakeapi.server import FakeApi
from tests.support.cluster import Cluster
from worker.models import parse_time


@dataclass
class AuthCluster(Cluster):
    """A :class:`Cluster` whose credentials are exactly ``auth``: none until the test sets them
    (the base one uses the fake's token). The helpers that make them are in
    :mod:`tests.support.environment` (``token_auth``, ``iam_auth``, ``aksk_auth``)."""

    auth: dict[str, str] | None = field(default_factory=dict)


# --- Inventories -------------------------------------------------------------------------------


def eligible_tasks(fake: FakeApi, older_than: timedelta = timedelta(days=7)) -> list[dict[str, str]]:
    """The fake's tasks that the default policy selects (finished, ended before the cut-off)."""
    cutoff = datetime.now(UTC) - older_than
    found = []
    for share_id in fake.share_ids:
        for task in fake.tasks(share_id):
            ended = parse_time(task.get("end_time"))
            if task["status"] in ("SUCCESS", "FAIL") and ended is not None and ended <= cutoff:
                found.append({"share_id": share_id, **task})
    return found


def write_manifest(fake: FakeApi, path: Path, limit: int | None = None) -> int:
    """A JSON-lines manifest of eligible tasks with their status and end time, so that planning
    needs no API call at all (the CLI then never authenticates: only the workers do)."""
    tasks = eligible_tasks(fake)[:limit]
    with path.open("w") as out:
        for task in tasks:
            record = {
                "project_id": fake.project_id,
                "share_id": task["share_id"],
                "task_id": task["task_id"],
                "status": task["status"],
                "end_time": task["end_time"],
            }
            out.write(json.dumps(record) + "\n")
    return len(tasks)


# --- Everything Redis holds ----------------------------------------------------------------------


def _text(value: bytes | str | float) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _kombu_bodies(text: str) -> list[str]:
    """A kombu message (queue entry or unacked hash value) carries its body base64-encoded:
    decode it, so that the check reads what a consumer would read."""
    try:
        data: Any = json.loads(text)
    except ValueError:
        return []
    found: list[str] = []
    # The unacked hash stores [message, exchange, routing_key].
    candidates = data if isinstance(data, list) else [data]
    for item in candidates:
        if not isinstance(item, dict) or "body" not in item:
            continue
        body = item["body"]
        props = item.get("properties") or {}
        if isinstance(body, str) and props.get("body_encoding") == "base64":
            with contextlib.suppress(ValueError):
                found.append(base64.b64decode(body).decode("utf-8", errors="replace"))
        found.append(json.dumps(item.get("headers", {})))
    return found


@dataclass
class RedisDump:
    """Every key with its type and full contents, as text; kombu bodies decoded alongside."""

    entries: dict[str, tuple[str, list[str]]]  # key -> (type, values)

    @property
    def text(self) -> str:
        parts: list[str] = []
        for key, (kind, values) in sorted(self.entries.items()):
            parts.append(f"== {kind} {key}")
            parts.extend(values)
        return "\n".join(parts)

    def types(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for kind, _ in self.entries.values():
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    def keys_of(self, kind: str) -> list[str]:
        return sorted(k for k, (t, _) in self.entries.items() if t == kind)


def dump_redis(url: str) -> RedisDump:
    client = redis.Redis.from_url(url)  # raw bytes: nothing is lost to decoding
    entries: dict[str, tuple[str, list[str]]] = {}
    try:
        for raw_key in client.scan_iter(count=1000):
            key = _text(raw_key)
            kind = _text(client.type(raw_key))
            values: list[str] = []
            if kind == "string":
                got = client.get(raw_key)
                values = [_text(got)] if got is not None else []
            elif kind == "hash":
                for k, v in client.hgetall(raw_key).items():
                    values += [_text(k), _text(v)]
            elif kind == "list":
                values = [_text(v) for v in client.lrange(raw_key, 0, -1)]
            elif kind == "set":
                values = [_text(v) for v in client.smembers(raw_key)]
            elif kind == "zset":
                for member, score in client.zrange(raw_key, 0, -1, withscores=True):
                    values += [_text(member), _text(score)]
            elif kind == "stream":
                for entry_id, fields in client.xrange(raw_key, "-", "+"):
                    values.append(_text(entry_id))
                    for k, v in fields.items():
                        values += [_text(k), _text(v)]
            elif kind == "none":  # expired between SCAN and TYPE
                continue
            else:
                values = [f"<unhandled type {kind}>"]
            decoded = [body for value in values for body in _kombu_bodies(value)]
            entries[key] = (kind, values + decoded)
    finally:
        client.close()
    return RedisDump(entries)


class PubSubRecorder:
    """Every message published on the Redis server while it runs (Celery's task events included)."""

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._stop = threading.Event()
        self.messages: list[str] = []
        self._thread = threading.Thread(target=self._run, name="pubsub-recorder", daemon=True)

    def __enter__(self) -> PubSubRecorder:
        self._pubsub.psubscribe("*")
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                message = self._pubsub.get_message(timeout=0.2)
            except (redis.RedisError, ValueError):
                return
            if message is not None:
                data = _text(message.get("data", b""))
                self.messages.append(f"{_text(message.get('channel', b''))} {data}")
                self.messages.extend(_kombu_bodies(data))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._pubsub.close()
        self._client.close()

    @property
    def text(self) -> str:
        return "\n".join(self.messages)


# --- The forms a secret could leak in --------------------------------------------------------


def _b64_fragments(raw: bytes, encode: Any) -> set[str]:
    """The part of ``encode(prefix + raw)`` that depends on ``raw`` alone, for each of the three
    alignments it can have inside a larger base64 text."""
    out: set[str] = set()
    for shift in range(3):
        encoded = encode(b"\0" * shift + raw).decode("ascii")
        first = -(-shift // 3)  # the first 3-byte group made only of the secret's bytes
        last = (shift + len(raw)) // 3
        fragment = encoded[4 * first : 4 * last]
        if len(fragment) >= 8:
            out.add(fragment)
    return out


def leak_forms(secret: str) -> dict[str, str]:
    """Name -> text for the secret as is, URL-encoded, JSON-escaped, hex, and base64 (standard
    and URL-safe, every alignment)."""
    raw = secret.encode("utf-8")
    forms = {
        "plain": secret,
        "url-quote": urllib.parse.quote(secret, safe=""),
        "url-quote-plus": urllib.parse.quote_plus(secret),
        "json": json.dumps(secret)[1:-1],
        "hex": raw.hex(),
    }
    for i, fragment in enumerate(sorted(_b64_fragments(raw, base64.b64encode))):
        forms[f"base64#{i}"] = fragment
    for i, fragment in enumerate(sorted(_b64_fragments(raw, base64.urlsafe_b64encode))):
        forms[f"base64url#{i}"] = fragment
    return forms


def find_leaks(secrets: dict[str, str], places: dict[str, str]) -> list[str]:
    """One line per (secret, form, place) where the secret shows up; empty when none does."""
    found = []
    lowered = {name: text.lower() for name, text in places.items()}
    for secret_name, secret in secrets.items():
        for form_name, form in leak_forms(secret).items():
            needle = form.lower()  # hex and percent-encoding may come in either case
            for place_name, text in lowered.items():
                at = text.find(needle)
                if at >= 0:
                    context = places[place_name][max(0, at - 60) : at + len(form) + 20].replace("\n", " ")
                    found.append(f"{secret_name} ({form_name}) in {place_name}: ...{context}...")
    return found


def poll(predicate: Any, timeout: float, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


def issued_tokens(fake: FakeApi) -> list[str]:
    """Every token the fake IAM issued (read from its registry on its own loop)."""
    return fake._on_loop(lambda: list(fake.service.tokens._issued))


def forget_tokens(fake: FakeApi) -> int:
    """Make the fake forget every issued token: they then answer 401 APIGW.0301 (as a token
    of another region or a mangled one would), not 0307."""

    def clear() -> int:
        issued = fake.service.tokens._issued
        count = len(issued)
        issued.clear()
        return count

    return fake._on_loop(clear)
