"""The audit's hash chain on a real run (Redis, a worker, the fake API with failures and retries),
then Redis tampered with directly: each kind of tampering is caught by ``audit verify RUN_ID``
(exit 8, the first broken link named) and by ``audit verify --bundle`` on a bundle made from the
tampered run; a bundle made before verifies still, and one edited after it was written does not.
With ``SFS_CLEANUP_AUDIT_KEY`` set, a chain rebuilt without that key is caught; without a key,
a rebuilt chain verifies (what docs/operations.md says: the unkeyed chain proves less)."""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from sandbox.fakeapi.server import FakeApi
from scheduler.evidence import members as m
from tests.support.cluster import Cluster, fake_api
from tests.support.secrets import write_manifest
from worker.ledger import Audit
from worker.ledger.chain import Chain, ChainState, entries, split_seq, with_seq
from worker.ledger.compact import decode_batch_records, encode_batch_records

pytestmark = pytest.mark.integration

KEY = "audit-key-for-tests-0123456789abcdef"
fake = fake_api(
    shares=2,
    tasks_per_share=12,
    seed=41,
    deleting_seconds=0,
    permanent_error_ratio=0.2,
    fail_first_ratio=0.3,
    fail_first_k=2,
    record_request_ids=True,
)
NO_REDIS = {"SFS_CLEANUP_REDIS_URL": "redis://127.0.0.1:1/0"}  # an offline verify must not need it

Records = tuple[dict[str, str], dict[str, str]]


@pytest.fixture
def cluster(redis_url: str, fake: FakeApi, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(redis_url=redis_url, fake=fake, tmp=tmp_path, settings={"SFS_CLEANUP_AUDIT_KEY": KEY})
    yield c
    c.stop()


@pytest.fixture
def run_id(cluster: Cluster, fake: FakeApi, tmp_path: Path) -> str:
    manifest = tmp_path / "tasks.jsonl"
    write_manifest(fake, manifest)
    cluster.start_worker("w1", concurrency=2)
    code, report = cluster.purge_json("--manifest", str(manifest), "--yes", "--wait")
    assert code == 3 and report["outcomes"]["failed"] > 0 and report["retries"] > 0, report
    assert report["chain"]["keyed"] and report["chain"]["head"] and report["chain"]["entries"] > 0
    return str(report["run_id"])


@pytest.fixture
def audit(redis_url: str) -> Audit:
    return Audit(redis.Redis.from_url(redis_url), audit_key=KEY.encode())


# --- Tampering, as someone with write access to Redis would do it -----------------------------------
def snapshot(r: redis.Redis, run_id: str) -> dict[bytes, tuple[bytes, int]]:
    return {key: (r.dump(key), max(0, r.pttl(key))) for key in r.scan_iter(match=f"sfs:run:{{{run_id}}}*")}  # type: ignore[misc]


def restore(r: redis.Redis, run_id: str, saved: dict[bytes, tuple[bytes, int]]) -> None:
    for key in r.scan_iter(match=f"sfs:run:{{{run_id}}}*"):
        r.delete(key)
    for key, (data, ttl) in saved.items():
        r.restore(key, ttl, data, replace=True)


def edit_batch(audit: Audit, run_id: str, number: int, change: Callable[[Records], None]) -> None:
    """Change a batch's stored records in whichever form they are (compacted, or live hashes)."""
    r, batch = audit.raw_redis, audit.batch(run_id, number)
    assert batch is not None
    blob = r.hget(audit.keys.compacted(run_id), str(number))
    if blob is not None:
        records = decode_batch_records(batch.task_ids, blob)  # type: ignore[arg-type]
        change(records)
        r.hset(audit.keys.compacted(run_id), str(number), encode_batch_records(batch.task_ids, *records))
        return
    records = audit.batch_records(batch)
    change(records)
    for key, values in zip(
        (audit.keys.outcomes(run_id, number), audit.keys.attempts(run_id, number)), records, strict=True
    ):
        r.delete(key)
        if values:
            r.hset(key, mapping=values)  # type: ignore[arg-type]


def failed_task(audit: Audit, run_id: str) -> tuple[int, str]:
    for batch in audit.iter_batches(run_id):
        finals, _ = audit.batch_records(batch)
        for task_id, stored in finals.items():
            if '"o":"failed"' in stored:
                return batch.number, task_id
    raise AssertionError("the run has no failed task")


def rewrite_outcome(audit: Audit, run_id: str) -> int:
    """A failed task made 'deleted', with the run's counters made to agree: only the chain tells."""
    number, task_id = failed_task(audit, run_id)

    def change(records: Records) -> None:
        records[0][task_id] = records[0][task_id].replace('"o":"failed"', '"o":"deleted"')

    edit_batch(audit, run_id, number, change)
    audit.redis.hincrby(audit.keys.run(run_id), "n:failed", -1)
    audit.redis.hincrby(audit.keys.run(run_id), "n:deleted", 1)
    return number


def edited(audit: Audit, run_id: str) -> str:
    return f"batch {rewrite_outcome(audit, run_id)}: the records do not hash to the chain's head"


def edited_live(audit: Audit, run_id: str) -> str:
    number, _ = failed_task(audit, run_id)
    batch = audit.batch(run_id, number)
    assert batch is not None
    audit.expand_batch(batch)  # the form a running run has: the live hashes
    assert audit.redis.exists(audit.keys.outcomes(run_id, number))
    return edited(audit, run_id)


def removed(audit: Audit, run_id: str) -> str:
    """A task's attempts taken out, and the attempt counter lowered to match."""
    number, task_id = failed_task(audit, run_id)
    lines: list[str] = []

    def change(records: Records) -> None:
        lines.extend(records[1].pop(task_id).split("\n"))

    edit_batch(audit, run_id, number, change)
    audit.redis.hincrby(audit.keys.run(run_id), "attempts", -len(lines))
    return f"batch {number}: no record at chain position"


def inserted(audit: Audit, run_id: str) -> str:
    """An attempt line added at the end of a batch's chain, the chain's count and counters raised."""
    number, task_id = failed_task(audit, run_id)
    states = audit.chain_states(run_id)
    state = states[number]

    def change(records: Records) -> None:
        body, _, _ = split_seq(records[1][task_id].split("\n")[-1])
        records[1][task_id] += "\n" + with_seq(body.replace('"n":', '"n":9'), state.count + 1)

    edit_batch(audit, run_id, number, change)
    audit.redis.hset(audit.keys.chain(run_id), str(number), ChainState(state.head, state.count + 1).encode())
    audit.redis.hincrby(audit.keys.run(run_id), "attempts", 1)
    audit.redis.hincrby(audit.keys.run(run_id), "chain_n", 1)
    return f"batch {number}: the records do not hash to the chain's head"


def reordered(audit: Audit, run_id: str) -> str:
    """Two final outcomes swap their places in the chain (content untouched)."""
    number, _ = failed_task(audit, run_id)

    def change(records: Records) -> None:
        a, b = sorted(records[0])[:2]
        (body_a, q_a, _), (body_b, q_b, _) = split_seq(records[0][a]), split_seq(records[0][b])
        assert q_a is not None and q_b is not None
        records[0][a], records[0][b] = with_seq(body_a, q_b), with_seq(body_b, q_a)

    edit_batch(audit, run_id, number, change)
    return f"batch {number}: the records do not hash to the chain's head"


def counter(audit: Audit, run_id: str) -> str:
    audit.redis.hincrby(audit.keys.run(run_id), "n:deleted", 1)
    return "counter n:deleted says"


def rebuild(audit: Audit, run_id: str, chain: Chain) -> int:
    """Rewrite a record, then recompute every batch's chain and the run's head with ``chain``."""
    number = rewrite_outcome(audit, run_id)
    for batch in audit.iter_batches(run_id):
        found = sorted(entries(*audit.batch_records(batch)), key=lambda e: e.seq or 0)
        state = chain.genesis(run_id, batch.number)
        for e in found:
            state = chain.step(state, e.task_id, e.kind, e.body)
        audit.redis.hset(audit.keys.chain(run_id), str(batch.number), state.encode())
    audit.redis.hset(audit.keys.run(run_id), "chain_head", chain.run_head(run_id, audit.chain_states(run_id).items()))
    return number


def rebuilt_unkeyed(audit: Audit, run_id: str) -> str:
    rebuild(audit, run_id, Chain(None))
    # What an unkeyed deployment would see: the rebuilt chain verifies. The key is what stops it.
    assert audit.verify_run(run_id, Chain(None)).intact
    return "the records do not hash to the chain's head"


def rebuilt_foreign_key(audit: Audit, run_id: str) -> str:
    rebuild(audit, run_id, Chain(b"a key that is not the one"))
    return "the records do not hash to the chain's head"  # the first batch already


TAMPERING = [edited, edited_live, removed, inserted, reordered, counter, rebuilt_unkeyed, rebuilt_foreign_key]


# --- Checks ---------------------------------------------------------------------------------------
def verify_live(cluster: Cluster, run_id: str) -> tuple[int, dict[str, Any]]:
    result = cluster.cli("audit", "verify", run_id, "--json")
    return result.returncode, json.loads(result.stdout)


def make_bundle(cluster: Cluster, run_id: str, path: Path) -> None:
    made = cluster.cli("audit", "bundle", run_id, "-o", str(path), "--force")
    assert made.returncode == 0, made.stderr


def verify_offline(cluster: Cluster, path: Path, **env: str) -> tuple[int, dict[str, Any]]:
    result = cluster.cli("audit", "verify", "--bundle", str(path), "--json", **NO_REDIS, **env)
    return result.returncode, json.loads(result.stdout)


def rewrite_member(path: Path, name: str, edit: Callable[[bytes], bytes]) -> None:
    """Edit one member and recompute MANIFEST and its digest: only what the members say can tell."""
    with zipfile.ZipFile(path) as z:
        contents = {n: z.read(n) for n in z.namelist()}
    contents[name] = edit(contents[name])
    listed = [
        m.Entry(n, len(data), hashlib.sha256(data).hexdigest())
        for n, data in contents.items()
        if n not in (m.MANIFEST, m.MANIFEST_DIGEST)
    ]
    contents[m.MANIFEST] = m.render_manifest(listed)
    contents[m.MANIFEST_DIGEST] = f"{m.digest(contents[m.MANIFEST])}  {m.MANIFEST}\n".encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for n, data in contents.items():
            z.writestr(n, data)


def test_every_kind_of_tampering_is_caught_live_and_in_a_bundle(
    cluster: Cluster, run_id: str, audit: Audit, tmp_path: Path
) -> None:
    code, intact = verify_live(cluster, run_id)
    assert code == 0 and intact["intact"] and intact["keyed"], intact
    assert intact["chain_head"] == intact["sealed_head"] == audit.run(run_id)["chain_head"]
    plain = cluster.cli("audit", "verify", run_id)
    assert plain.returncode == 0 and f"intact: run {run_id} (chain head {intact['chain_head']})" in plain.stdout
    # The key stays in the processes: never in Redis (not even as a script argument), never logged.
    dumped = b"".join(audit.raw_redis.dump(k) or b"" for k in audit.raw_redis.scan_iter())  # type: ignore[misc]
    assert KEY.encode() not in dumped
    assert all(KEY not in w.log_path.read_text() for w in cluster.workers)
    shown = cluster.cli("runs", "show", run_id).stdout
    assert "audit chain entries" in shown and intact["chain_head"] in shown
    before = tmp_path / "before.zip"
    make_bundle(cluster, run_id, before)
    code, sound = verify_offline(cluster, before)
    assert code == 0 and any("keyed (HMAC-SHA256)" in c for c in sound["checked"]), sound

    r = audit.raw_redis
    saved = snapshot(r, run_id)
    for tamper in TAMPERING:
        restore(r, run_id, saved)
        expected = tamper(audit, run_id)
        code, found = verify_live(cluster, run_id)
        assert code == 8 and not found["intact"], (tamper.__name__, found)
        assert expected in found["first_broken_link"], (tamper.__name__, found["first_broken_link"])
        tampered = tmp_path / f"{tamper.__name__}.zip"
        make_bundle(cluster, run_id, tampered)
        code, checked = verify_offline(cluster, tampered)
        assert code == 8 and not checked["sound"], (tamper.__name__, checked)

    restore(r, run_id, saved)
    assert verify_live(cluster, run_id)[0] == 0, "restored: intact again"
    counter(audit, run_id)
    plain = cluster.cli("audit", "verify", run_id)
    assert plain.returncode == 8 and "first broken link: counter n:deleted says" in plain.stderr, plain.stderr
    restore(r, run_id, saved)
    code, sound = verify_offline(cluster, before)
    assert code == 0, ("a bundle made before the tampering still verifies", sound)


def test_a_bundle_edited_after_it_was_written_fails_offline(cluster: Cluster, run_id: str, tmp_path: Path) -> None:
    path = tmp_path / "evidence.zip"
    make_bundle(cluster, run_id, path)
    # Without the key the keyed chain's order and counts are still checked; its hashes cannot be.
    code, sound = verify_offline(cluster, path, SFS_CLEANUP_AUDIT_KEY="")
    assert code == 0 and any("keyed and SFS_CLEANUP_AUDIT_KEY is not set" in n for n in sound["notes"]), sound

    def forge(data: bytes) -> bytes:
        lines = data.decode().splitlines()
        for i, line in enumerate(lines):
            if '\\"o\\":\\"failed\\"' in line:
                lines[i] = line.replace('\\"o\\":\\"failed\\"', '\\"o\\":\\"deleted\\"', 1)
                return ("\n".join(lines) + "\n").encode()
        raise AssertionError("no failed task in the chain member")

    rewrite_member(path, m.CHAIN, forge)
    code, broken = verify_offline(cluster, path)
    assert code == 8 and "first broken link" in broken["problem"], broken
