"""The worker's failure design on the real broker: poison records dead-lettered beside valid ones, an
infrastructure failure that stops the worker without committing, and a changelog that rebuilds exactly
what RocksDB holds after a kill -9 in the middle of a table write."""

from __future__ import annotations

import asyncio
import subprocess
from itertools import pairwise
from pathlib import Path

import httpx
import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from rocksdict import AccessType, Options, Rdict

from app.settings import Settings
from domain import dead_letters
from domain.events import encode_instance_event
from tests.aggregator.conftest import (
    STUDYSTREAM,
    TopicCollector,
    Worker,
    make_event,
    new_worker,
    produce_events,
    produce_raw,
)
from tests.conftest import wait_for, worker_env
from tests.factories import SyntheticStudy

READY_TIMEOUT = 90.0
STUDY_TABLES = ("study-headers", "study-series", "study-instances", "study-pending")
OFFSET_KEY = b"__faust\0offset__"


async def _committed(settings: Settings) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(settings.app_id)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == settings.topic_raw}


def committed(settings: Settings) -> dict[int, int]:
    """The worker group's committed imaging.raw offsets (the next record each partition would read)."""
    return asyncio.run(_committed(settings))


def partition_of(collector: TopicCollector, key: bytes) -> int:
    return next(p for k, _, _, p in collector.messages if k == key)


def test_twenty_events_and_one_poison_record_together_twenty_aggregated_one_dead_lettered_all_committed(
    aggregator_settings: Settings, workers: list[Worker], ready_topic: TopicCollector, tmp_path: Path
) -> None:
    raw = TopicCollector(aggregator_settings, aggregator_settings.topic_raw)
    dlq = TopicCollector(aggregator_settings, aggregator_settings.topic_dlq)
    try:
        study = SyntheticStudy(series=2, per_series=10)
        events = study.events()
        poison = orjson.dumps({**orjson.loads(encode_instance_event(events[0])), "instance_number": "12"})
        messages = [(e.key, encode_instance_event(e)) for e in events[:10]]
        messages += [(study.uid.encode(), poison)] + [(e.key, encode_instance_event(e)) for e in events[10:]]
        produce_raw(aggregator_settings, messages)  # one produce: the worker takes them as one batch
        new_worker(workers, aggregator_settings, tmp_path, "w1").start().wait_started()

        (record,) = wait_for(lambda: ready_topic.ready_for(study.uid), READY_TIMEOUT, what="the study ready")
        assert record.number_of_instances == 20
        ((_, value, headers, _),) = wait_for(lambda: list(dlq.messages), 30, what="the poison record dead-lettered")
        assert value == poison and headers[dead_letters.REASON] == b"invalid_field"
        assert b"instance_number" in headers[dead_letters.MESSAGE]
        partition = partition_of(raw, study.uid.encode())
        wait_for(lambda: committed(aggregator_settings).get(partition) == 21, 30, what="all 21 offsets committed")
    finally:
        raw.close()
        dlq.close()


def test_an_infrastructure_failure_stops_the_worker_without_committing_the_record_which_is_handled_after_restart(
    aggregator_settings: Settings, workers: list[Worker], ready_topic: TopicCollector, tmp_path: Path
) -> None:
    healthy, faulty = SyntheticStudy(series=1, per_series=3), SyntheticStudy(series=1, per_series=2)
    faulting = aggregator_settings.model_copy(
        update={"aggregator_fault_point": "infrastructure_error", "aggregator_fault_study": faulty.uid}
    )
    raw = TopicCollector(aggregator_settings, aggregator_settings.topic_raw)
    try:
        produce_events(aggregator_settings, healthy.events())
        worker = new_worker(workers, faulting, tmp_path, "w1").start()
        worker.wait_started()
        wait_for(lambda: ready_topic.ready_for(healthy.uid), READY_TIMEOUT, what="the healthy study")
        produce_events(aggregator_settings, faulty.events())

        wait_for(worker.exited, 60, what="the worker to stop on the infrastructure failure")
        assert worker.process is not None and worker.process.returncode != 0
        log = worker.log()
        assert "stopping the worker without committing it" in log and "dead-lettered" not in log
        partition = partition_of(raw, faulty.uid.encode())
        faulty_offsets = _offsets_of(raw, faulty.uid.encode())
        assert committed(aggregator_settings).get(partition, 0) <= faulty_offsets[0], "committed past the record"

        restarted = new_worker(workers, aggregator_settings, tmp_path, "w1-again")  # the fault switched off
        restarted.start().wait_started()
        (record,) = wait_for(lambda: ready_topic.ready_for(faulty.uid), READY_TIMEOUT, what="the record handled")
        assert record.number_of_instances == 2
        assert len(ready_topic.ready_for(healthy.uid)) == 1
    finally:
        raw.close()


def test_a_record_faust_acknowledges_without_the_agent_is_not_committed_but_read_again_and_aggregated(
    aggregator_settings: Settings, workers: list[Worker], ready_topic: TopicCollector, tmp_path: Path
) -> None:
    """Faust's stream acknowledges records it skips around a rebalance (generation changed, flow
    suspended); the fault point does the same to a study's first record on a worker that stays put."""
    study = SyntheticStudy(series=1, per_series=4)
    skipping = aggregator_settings.model_copy(
        update={"aggregator_fault_point": "faust_skip", "aggregator_fault_study": study.uid}
    )
    raw = TopicCollector(aggregator_settings, aggregator_settings.topic_raw)
    try:
        worker = new_worker(workers, skipping, tmp_path, "w1").start()
        worker.wait_started()
        produce_events(aggregator_settings, study.events())

        (record,) = wait_for(lambda: ready_topic.ready_for(study.uid), READY_TIMEOUT, what="the study ready")
        assert (record.revision, record.number_of_instances) == (1, 4)
        log = worker.log()
        assert "acknowledged by Faust without reaching the agent" in log
        wait_for(lambda: len(_offsets_of(raw, study.uid.encode())) == 4, 30, what="the 4 records read back")
        partition, last = partition_of(raw, study.uid.encode()), _offsets_of(raw, study.uid.encode())[-1]
        wait_for(lambda: committed(aggregator_settings).get(partition, 0) > last, 60, what="every record committed")
        assert len(ready_topic.ready_for(study.uid)) == 1
    finally:
        raw.close()


def _offsets_of(collector: TopicCollector, key: bytes) -> list[int]:
    """Offsets of ``key``'s records in their partition, in order (the collector reads each partition in order)."""
    partition = partition_of(collector, key)
    in_partition = [k for k, _, _, p in collector.messages if p == partition]
    return [offset for offset, k in enumerate(in_partition) if k == key]


def table_rows(datadir: Path) -> dict[tuple[str, bytes], bytes]:
    """Every row of the study tables in a stopped worker's RocksDB files (offset bookkeeping left out)."""
    rows: dict[tuple[str, bytes], bytes] = {}
    for table in STUDY_TABLES:
        paths = sorted(datadir.rglob(f"*{table}-*.db"))
        assert paths, f"no {table} partitions under {datadir}"
        for path in paths:
            db = Rdict(str(path), Options(raw_mode=True), access_type=AccessType.read_only())
            try:
                rows.update(((table, key), value) for key, value in db.items() if key != OFFSET_KEY)
            finally:
                db.close()
    return rows


@pytest.mark.parametrize("fault_point", ["after_changelog_send", "after_changelog_ack"])
def test_kill_9_inside_a_table_write_leaves_a_changelog_that_rebuilds_the_store_row_by_row(
    aggregator_settings: Settings, workers: list[Worker], ready_topic: TopicCollector, tmp_path: Path, fault_point: str
) -> None:
    # A 2 s linger: the records of the write are still in the producer when the worker dies (first case).
    settings = aggregator_settings.model_copy(update={"aggregator_producer_linger": 2.0, "quiet_period": 3.0})
    faulting = settings.model_copy(update={"aggregator_fault_point": fault_point, "aggregator_fault_after_writes": 1})
    study = SyntheticStudy(series=2, per_series=5)
    produce_events(settings, study.events())

    victim = new_worker(workers, faulting, tmp_path, "victim").start()
    wait_for(victim.exited, READY_TIMEOUT, what=f"the worker to die at {fault_point}")
    assert f"fault injection: exiting at {fault_point}" in victim.log()
    assert not ready_topic.ready_for(study.uid)

    survivor = Worker(victim.env | {"STUDYSTREAM_AGGREGATOR_FAULT_POINT": ""}, tmp_path, "survivor")
    survivor.web_port = victim.web_port  # the same data directory: what the dead worker left in RocksDB
    workers.append(survivor)
    survivor.start().wait_started()
    (first,) = wait_for(lambda: ready_topic.ready_for(study.uid), READY_TIMEOUT, what="revision 1")
    assert first.number_of_instances == 10
    survivor.stop()
    local = table_rows(tmp_path / "state" / f"worker-{survivor.web_port}")

    restored = new_worker(workers, settings, tmp_path, "restored").start()  # an empty data directory
    restored.wait_started()
    restored.stop()
    rebuilt = table_rows(tmp_path / "state" / f"worker-{restored.web_port}")
    assert rebuilt == local, f"{len(set(rebuilt) ^ set(local))} rows differ between RocksDB and the changelog"
    assert sum(1 for table, _ in local if table == "study-instances") == 10

    late = make_event(study.uid, study.series_uid(1), 6, series_number=2)
    produce_events(settings, [late])
    restored.start().wait_started(starts=2)
    wait_for(lambda: len(ready_topic.ready_for(study.uid)) >= 2, READY_TIMEOUT, what="revision 2")
    records = ready_topic.ready_for(study.uid)
    assert [(r.revision, r.number_of_instances) for r in records][-1] == (2, 11)
    assert all(a.number_of_instances <= b.number_of_instances for a, b in pairwise(records))


def test_a_crash_after_the_ready_record_is_acknowledged_never_lets_later_instances_join_that_revision(
    aggregator_settings: Settings, workers: list[Worker], ready_topic: TopicCollector, tmp_path: Path
) -> None:
    settings = aggregator_settings.model_copy(update={"quiet_period": 2.0})
    study = SyntheticStudy(series=1, per_series=4)
    produce_events(settings, study.events())
    victim = new_worker(
        workers, settings.model_copy(update={"aggregator_fault_point": "after_ready_ack"}), tmp_path, "v"
    )
    victim.start()
    wait_for(victim.exited, READY_TIMEOUT, what="the worker to die right after revision 1 was acknowledged")
    assert [r.revision for r in ready_topic.ready_for(study.uid)] == [1]

    late = make_event(study.uid, study.series_uid(0), 5)
    produce_events(settings, [late])  # before the restart: read in the same batch as the recovery's check
    survivor = Worker(victim.env | {"STUDYSTREAM_AGGREGATOR_FAULT_POINT": ""}, tmp_path, "survivor")
    survivor.web_port = victim.web_port
    workers.append(survivor)
    survivor.start().wait_started()

    wait_for(lambda: any(r.revision == 2 for r in ready_topic.ready_for(study.uid)), READY_TIMEOUT, what="revision 2")
    by_revision: dict[int, set[frozenset[str]]] = {}
    for record in ready_topic.ready_for(study.uid):
        sops = frozenset(i.uid for s in record.series for i in s.instances)
        by_revision.setdefault(record.revision, set()).add(sops)
    assert [len(contents) for _, contents in sorted(by_revision.items())] == [1, 1], "a revision changed its content"
    (revision_1,), (revision_2,) = by_revision[1], by_revision[2]
    assert len(revision_1) == 4 and revision_2 == revision_1 | {late.sop_instance_uid}


def _on_fhir(settings: Settings, study_uid: str) -> list[dict]:
    response = httpx.get(
        f"{settings.fhir_base_url}/ImagingStudy?identifier=urn:dicom:uid|urn:oid:{study_uid}",
        headers={"Cache-Control": "no-cache"},
        timeout=30,
    )
    response.raise_for_status()
    return [e["resource"] for e in response.json().get("entry") or ()]


def test_records_with_fields_of_the_wrong_type_are_dead_lettered_and_the_studies_around_them_reach_fhir(
    fhir: Settings, aggregator_settings: Settings, workers: list[Worker], ready_topic: TopicCollector, tmp_path: Path
) -> None:
    """The records of the report that crashed both agents: each dead-lettered, nothing else disturbed."""
    before, after = SyntheticStudy(series=1, per_series=3), SyntheticStudy(series=1, per_series=3)
    victim = SyntheticStudy(series=1, per_series=1)
    template = orjson.loads(encode_instance_event(victim.events()[0]))
    malformed = [
        {"instance_number": "12"},
        {"procedure_codes": [{"code": "1", "scheme": "SCT", "meaning": "x", "unknown_key": 1}, {"code": 5}]},
        {"received_at": 1714557600},
        {"series_number": {"value": 1}},
        {"patient_name": ["Doe", "Jane"]},
    ]
    dlq = TopicCollector(aggregator_settings, aggregator_settings.topic_dlq)
    try:
        produce_events(aggregator_settings, before.events())
        produce_raw(
            aggregator_settings, [(victim.uid.encode(), orjson.dumps(template | change)) for change in malformed]
        )
        produce_events(aggregator_settings, after.events())
        new_worker(workers, aggregator_settings, tmp_path, "w1").start().wait_started()

        for study in (before, after):
            wait_for(lambda s=study: _on_fhir(fhir, s.uid), READY_TIMEOUT, what=f"study {study.uid} on FHIR")
        letters = wait_for(lambda: dlq.messages if len(dlq.messages) >= 5 else None, 30, what="5 dead letters")
        assert {h[dead_letters.REASON] for _, _, h, _ in letters} == {b"invalid_field"}
        assert sorted(v for _, v, _, _ in letters) == sorted(orjson.dumps(template | c) for c in malformed)
        assert not ready_topic.ready_for(victim.uid)
        assert "Traceback" not in workers[0].log()
    finally:
        dlq.close()


def test_redrive_sends_a_dead_letter_back_once_its_cause_is_fixed_and_a_second_run_sends_nothing(
    aggregator_settings: Settings, workers: list[Worker], ready_topic: TopicCollector, tmp_path: Path
) -> None:
    limited = aggregator_settings.model_copy(update={"aggregator_max_instances": 2})
    study = SyntheticStudy(series=1, per_series=3)
    dlq = TopicCollector(aggregator_settings, aggregator_settings.topic_dlq)
    try:
        produce_events(limited, study.events())
        first = new_worker(workers, limited, tmp_path, "w1").start()
        first.wait_started()
        wait_for(lambda: ready_topic.ready_for(study.uid), READY_TIMEOUT, what="revision 1 of 2 instances")
        ((_, _, headers, _),) = wait_for(lambda: list(dlq.messages), 30, what="the third instance dead-lettered")
        assert headers[dead_letters.REASON] == b"too_many_instances"
        first.stop()
        new_worker(workers, aggregator_settings, tmp_path, "w2").start().wait_started()  # the limit raised

        env = worker_env(aggregator_settings)
        dry = redrive(env, "--study", study.uid, "--dry-run")
        assert "1 dead letter(s) to send back" in dry and "Dry run" in dry
        other = redrive(env, "--study", "1.2.3", "--yes")
        assert "Nothing to send back" in other
        sent = redrive(env, "--stage", "aggregator", "--yes")
        assert "Sent 1 record(s) back" in sent

        second = wait_for(
            lambda: [r for r in ready_topic.ready_for(study.uid) if r.revision == 2], READY_TIMEOUT, what="revision 2"
        )
        assert second[0].number_of_instances == 3
        again = redrive(env, "--yes")
        assert "0 dead letter(s) to send back, 1 skipped" in again and "already sent back" in again
    finally:
        dlq.close()


def redrive(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [STUDYSTREAM, "redrive", *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
