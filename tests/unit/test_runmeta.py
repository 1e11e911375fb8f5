"""The typed view of a run hash: what code decides on is read in one place."""

from __future__ import annotations

from worker.ledger import RunMeta, RunStatus, Source, SourceKind, Trigger


def test_a_run_hash_reads_back_as_types() -> None:
    meta = RunMeta.of(
        {"run_id": "r1", "status": "held", "trigger": "schedule", "source": "live:a,b", "dry_run": "0"}
        | {"hold_reason": "anomaly"}
    )
    assert meta.status is RunStatus.HELD and meta.trigger is Trigger.SCHEDULE
    assert meta.source == Source(SourceKind.LIVE, "a,b") and str(meta.source) == "live:a,b"
    assert not meta.dry_run and meta.hold_reason == "anomaly" and meta.trigger.unattended


def test_unknown_or_missing_values_are_none_not_errors() -> None:
    meta = RunMeta.of({"trigger": "carrier-pigeon", "source": "nowhere", "dry_run": "1", "status": "odd"})
    assert meta.trigger is None and meta.source is None and meta.status is None and meta.dry_run


def test_only_schedule_and_messages_are_unattended() -> None:
    assert {t for t in Trigger if t.unattended} == {Trigger.SCHEDULE, Trigger.MESSAGE}


def test_a_manifest_name_with_colons_survives() -> None:
    assert Source.parse("manifest:a:b.csv") == Source(SourceKind.MANIFEST, "a:b.csv")
