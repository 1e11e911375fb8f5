"""Named policies from the schedule and from triggers, against a real Redis and the fake API:
each scheduled policy runs once per slot under its own key, with its own rules; a trigger picks a
policy by name (its own fields still override); an unknown name is refused and recorded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.fakeapi.server import FakeApi
from scheduler.context import Context
from scheduler.service import handle_trigger
from tests.support.cluster import Cluster, fake_api
from worker.ledger import Audit
from worker.settings import load_settings

pytestmark = pytest.mark.integration

fake = fake_api(shares=1, tasks_per_share=60, seed=33, deleting_seconds=0)

POLICIES = """\
policies:
  exports:
    types: [export]
    older_than: 0s
    schedule: "0 2 * * *"
  imports:
    types: [import, import_metadata, preload]
    older_than: 0s
    schedule: "0 2 * * *"
"""


@pytest.fixture
def cluster(redis_url: str, fake: FakeApi, tmp_path: Path) -> Iterator[Cluster]:
    path = tmp_path / "policies.yaml"
    path.write_text(POLICIES)
    c = Cluster(
        redis_url=redis_url,
        fake=fake,
        tmp=tmp_path,
        settings={"SFS_CLEANUP_POLICIES_FILE": str(path), "SFS_CLEANUP_SCHEDULE_ENABLED": "true"},
    )
    yield c
    c.stop()


def trigger(cluster: Cluster, name: str, **kwargs: Any) -> dict[str, Any]:
    env = cluster.env()
    settings = load_settings(**{k[12:].lower(): v for k, v in env.items() if k.startswith("SFS_CLEANUP_")})
    return handle_trigger(Context(settings), name, "m-1", (), kwargs)


def planned_types(cluster: Cluster, fake: FakeApi, run_id: str) -> set[str]:
    kinds = {t["task_id"]: t["type"] for t in fake.tasks()}
    audit = Audit(cluster.redis())
    return {kinds[t] for batch in audit.iter_batches(run_id) for t in batch.task_ids}


def test_each_scheduled_policy_runs_once_per_slot_with_its_own_rules(cluster: Cluster, fake: FakeApi) -> None:
    slot = "2026-11-29T02:00:00Z"
    exports = trigger(cluster, "sfs.nightly_purge", policy="exports", slot=slot)
    again = trigger(cluster, "sfs.nightly_purge", policy="exports", slot=slot)
    imports = trigger(cluster, "sfs.nightly_purge", policy="imports", slot=slot)
    assert again == {"accepted": True, "run_id": exports["run_id"], "duplicate": True, "slot": slot}
    assert imports["run_id"] != exports["run_id"] and not imports.get("duplicate")

    audit = Audit(cluster.redis())
    meta = audit.run(exports["run_id"])
    assert meta["schedule_policy"] == "exports" and meta["idempotency_key"] == "nightly-exports-20261129T0200Z"
    assert planned_types(cluster, fake, exports["run_id"]) == {"export"}
    assert planned_types(cluster, fake, imports["run_id"]) <= {"import", "import_metadata", "preload"}
    listed = [t for t in fake.tasks() if t["status"] in ("SUCCESS", "FAIL") and t.get("end_time")]
    assert exports["selected"] == sum(1 for t in listed if t["type"] == "export") > 0


def test_a_trigger_picks_a_policy_by_name_and_its_fields_still_override(cluster: Cluster, fake: FakeApi) -> None:
    started = trigger(cluster, "sfs.start_purge", policy_name="imports", policy={"max_deletions": 3}, dry_run=True)
    meta = Audit(cluster.redis()).run(started["run_id"])
    assert started["selected"] == 3 and '"name":"imports"' in meta["policy"].replace(" ", "")
    assert planned_types(cluster, fake, started["run_id"]) <= {"import", "import_metadata", "preload"}


def test_an_unknown_policy_name_is_refused_and_recorded(cluster: Cluster, fake: FakeApi) -> None:
    answer = trigger(cluster, "sfs.start_purge", policy_name="nightly-typo")
    assert answer["accepted"] is False and "no policy named 'nightly-typo'" in answer["error"]
    nightly = trigger(cluster, "sfs.nightly_purge", policy="gone")
    assert nightly["accepted"] is False and "no policy named 'gone'" in nightly["error"]
    events = Audit(cluster.redis()).events(50, kind="trigger_rejected")
    assert len(events) == 2 and Audit(cluster.redis()).list_runs(10) == []
    assert fake.stats()["requests_total"] == 0
