"""`studystream replay` against the real broker and HAPI: re-upload, re-aggregate, dry run, refusal."""

from __future__ import annotations

from domain.ready import decode_study_ready
from tests.conftest import wait_for
from tests.replay.conftest import ReplayPipeline

REFUSED_EXIT = 3


def ready_offsets(p: ReplayPipeline) -> dict[tuple[str, int], int]:
    return {k: v for k, v in p.committed().items() if k[0] == p.settings.topic_ready}


def test_dry_run_changes_nothing_and_replay_is_refused_while_a_worker_runs(pipeline: ReplayPipeline) -> None:
    p = pipeline
    wait_for(lambda: sum(ready_offsets(p).values()) == 3, 30, what="the uploader to commit 3 ready records")
    before = p.committed()

    refused = p.replay("--topic", p.settings.topic_ready, "--to-earliest", "--yes", check=False)
    assert refused.returncode == REFUSED_EXIT
    assert f"consumer group {p.group_id()} has 1 running member(s)" in refused.stderr
    assert p.committed() == before

    p.stop_worker()
    before = p.committed()
    dry = p.replay("--topic", p.settings.topic_ready, "--to-earliest", "--dry-run")
    assert "3 event(s) will be read again." in dry.stdout
    assert "Dry run: nothing changed." in dry.stdout
    rows = [
        line.split()
        for line in dry.stdout.splitlines()
        if len(line.split()) == 6 and all(cell.isdigit() or cell == "-" for cell in line.split())
    ]
    assert len(rows) == p.settings.topic_partitions
    assert {int(r[0]): int(r[3]) for r in rows if r[3] != "-"} == {
        partition: offset for (_, partition), offset in ready_offsets(p).items()
    }
    assert p.committed() == before


def test_replaying_ready_to_earliest_brings_back_a_deleted_imaging_study_once(pipeline: ReplayPipeline) -> None:
    p = pipeline
    originals = {s.uid: p.imaging_studies(s.uid)[0] for s in p.studies}
    deleted = p.studies[1].uid
    p.stop_worker()
    p.delete_imaging_study(originals[deleted]["id"])
    assert p.imaging_studies(deleted) == []

    result = p.replay("--to-earliest", "--yes")  # imaging.study.ready is the default topic
    assert "3 event(s) will be read again." in result.stdout
    assert "Ready records below offsets" in result.stdout
    assert all(offset == 0 for offset in ready_offsets(p).values())

    p.restart_worker()
    restored = p.wait_imaging_study(deleted, p.studies[1].instance_count)
    assert restored["id"] != originals[deleted]["id"]
    wait_for(lambda: sum(ready_offsets(p).values()) == 3, 30, what="the uploader to re-read all 3 records")
    for study in p.studies:
        (only,) = p.imaging_studies(study.uid)  # exactly one per study
        if study.uid != deleted:  # the surviving resource, not a second one
            assert only["id"] == originals[study.uid]["id"]


def test_replaying_raw_from_a_datetime_with_reset_state_rebuilds_only_the_later_studies(
    pipeline: ReplayPipeline,
) -> None:
    p = pipeline
    wait_for(lambda: len(p.ready.messages) == 3, 30, what="3 ready records")
    p.stop_worker()
    old = p.committed()
    raw = p.settings.topic_raw

    result = p.replay("--topic", raw, "--to-datetime", p.split_at, "--reset-state", "--yes")
    later_instances = p.studies[1].instance_count + p.studies[2].instance_count
    assert f"{later_instances} event(s) will be read again." in result.stdout
    assert f"consumer group {p.group_id(2)}" in result.stdout

    new = p.committed(generation=2)
    for record in p.first_study_records:  # the new group starts after every event of study 1 ...
        assert new[(raw, record.partition)] > record.offset
    assert sum(old.get(k, 0) - new[k] for k in new if k[0] == raw) == later_instances  # ... and before studies 2, 3
    # imaging.study.ready continues where the old group stood: the uploader does not re-read it.
    assert {k: v for k, v in new.items() if k[0] == p.settings.topic_ready} == ready_offsets(p)

    p.restart_worker()  # reads generation 2 from the control topic: fresh tables, group <id>-v2
    later = {p.studies[1].uid, p.studies[2].uid}

    def rebuilt() -> list:
        return [decode_study_ready(value) for _, value, _, _ in p.ready.messages[3:]]

    wait_for(lambda: {r.study_uid for r in rebuilt()} >= later, 60, what="studies 2 and 3 rebuilt")

    def reread_to_end() -> bool:
        now = p.committed(generation=2)
        return all(now.get(k, -1) >= v for k, v in old.items() if k[0] == raw)

    wait_for(reread_to_end, 30, what="the new group to re-read imaging.raw to its end")
    by_uid = {r.study_uid: r for r in rebuilt()}
    assert set(by_uid) == later  # study 1 is not reprocessed
    for study in p.studies[1:]:
        assert (by_uid[study.uid].revision, by_uid[study.uid].number_of_instances) == (1, study.instance_count)
        assert len(p.imaging_studies(study.uid)) == 1
    assert p.members(generation=2) == 1  # the restarted worker joined the new generation's group
