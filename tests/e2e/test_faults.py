"""Faults on the whole pipeline. Each test prints its figures and ends with 0 acknowledged instances lost
and 0 duplicate FHIR resources (and no patient data in any log)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from scu import synth
from tests.aggregator.conftest import TopicCollector
from tests.conftest import wait_for
from tests.e2e.conftest import E2E, SentStudy, acknowledged_by_send, studies_in

OPEN_STUDY = {"quiet_period": 4.0}  # long enough to act on a study while it is still being received
ONE_WORKER = {"workers": 1}  # the fault is elsewhere: one worker starts faster
UPLOADER_METRICS = ("/uploader/metrics", "studystream_uploader_attempts_total", "verdict")
AGGREGATOR_METRICS = ("/metrics", "studystream_aggregator_messages_total", "outcome")


@pytest.mark.parametrize("e2e", [ONE_WORKER], indirect=True)
def test_same_study_sent_twice_gives_one_study_one_patient_one_revision(e2e: E2E, tmp_path: Path) -> None:
    files = synth.write_studies(tmp_path / "in", studies=2, series=2, instances=5)
    studies = studies_in(files)
    e2e.remember(studies)

    first = e2e.send(tmp_path / "in", name="send-1")
    e2e.wait_all(studies)
    again = e2e.storescu(tmp_path / "in", name="storescu-2")  # the same files again, by the other sender

    assert first["stored"] == again == len(files)
    wait_for(
        lambda: e2e.worker_metric(*AGGREGATOR_METRICS, "duplicates") >= len(files),
        30,
        what="every repeated instance recognised by the aggregator",
    )
    rows = e2e.web_studies()
    assert {uid: (rows[uid]["status"], rows[uid]["revision"]) for uid in studies} == dict.fromkeys(
        studies, ("published", 1)
    )
    assert not any(e2e.bundle_path(uid, 2).exists() for uid in studies)
    acknowledged = {sop for s in studies.values() for sop in s.instances}
    e2e.assert_nothing_lost_nothing_duplicated(studies, 2 * len(files), acknowledged, "same study twice")
    e2e.assert_no_phi_in_logs()


@pytest.mark.parametrize("e2e", [ONE_WORKER], indirect=True)
def test_late_instance_after_publication_updates_the_same_imaging_study(e2e: E2E, tmp_path: Path) -> None:
    files = synth.write_studies(tmp_path / "in", studies=1, series=2, instances=4)
    early, late = files[:-1], files[-1]
    ((uid, study),) = studies_in(files).items()
    e2e.remember({uid: study})

    assert e2e.send(*early, name="send-early")["stored"] == len(early)
    e2e.fhir.wait_study(uid, instances=len(early))
    assert e2e.send(late, name="send-late")["stored"] == 1
    resource = e2e.wait_study(study)

    assert len(resource["series"]) == 2
    rows = e2e.web_studies()
    assert (rows[uid]["status"], rows[uid]["revision"]) == ("published", 2)
    assert e2e.bundle_path(uid, 1).is_file() and e2e.bundle_path(uid, 2).is_file()
    e2e.assert_nothing_lost_nothing_duplicated({uid: study}, len(files), study.instances, "late instance")
    e2e.assert_no_phi_in_logs()


@pytest.mark.parametrize("e2e", [OPEN_STUDY], indirect=True)
def test_worker_killed_mid_study_loses_nothing(e2e: E2E, tmp_path: Path) -> None:
    files = synth.write_studies(tmp_path / "in", studies=4, series=2, instances=8)
    studies = studies_in(files)
    second_halves, owners = _send_first_halves(e2e, studies)
    victim = max(e2e.workers, key=lambda w: len(owners[w.web_port]))
    rows = e2e.web_studies()
    assert all(rows[uid]["status"] == "receiving" for uid in owners[victim.web_port]), "studies still open"
    victim.kill()
    print(f"killed worker on port {victim.web_port} holding {len(owners[victim.web_port])} open studies")
    assert e2e.send(*second_halves, name="send-2")["stored"] == len(second_halves)
    victim.start().wait_started(starts=2)

    e2e.wait_all(studies)
    acknowledged = {sop for s in studies.values() for sop in s.instances}
    e2e.assert_nothing_lost_nothing_duplicated(studies, len(files), acknowledged, "worker kill -9")
    e2e.assert_no_phi_in_logs()


def _send_first_halves(e2e: E2E, studies: dict[str, SentStudy]) -> tuple[list[Path], dict[int, set[str]]]:
    """Send the first half of every study, wait until each study sits on a worker; return the second halves
    (still to send) and web port → the open studies that worker holds."""
    e2e.remember(studies)
    first_halves = [p for s in studies.values() for p in s.halves()[0]]
    assert e2e.send(*first_halves, name="send-1")["stored"] == len(first_halves)
    owners = wait_for(lambda: _owners(e2e, set(studies)), 30, what="the workers to hold the open studies")
    return [p for s in studies.values() for p in s.halves()[1]], owners


def _owners(e2e: E2E, uids: set[str]) -> dict[int, set[str]] | None:
    """Web port → the given studies on that worker's partitions, once every study is placed."""
    owners = {w.web_port: e2e.local_studies(w) & uids for w in e2e.workers}
    return owners if set().union(*owners.values()) == uids else None


@pytest.mark.parametrize("e2e", [ONE_WORKER], indirect=True)
def test_receiver_killed_mid_send_then_the_sender_resends_what_failed(e2e: E2E, tmp_path: Path) -> None:
    files = synth.write_studies(tmp_path / "in", studies=3, series=2, instances=10)
    studies = studies_in(files)
    e2e.remember(studies)
    e2e.receiver.stop()
    # The fault hook ends the receiver abruptly (os._exit) after storing the 25th instance, before its
    # success status goes back and before its event is published: the worst moment for a crash.
    e2e.receiver.start(STUDYSTREAM_RECEIVER_FAULT_AFTER_STORE="25")

    first = e2e.send(tmp_path / "in", name="send-1")
    wait_for(lambda: e2e.receiver.process.poll() is not None, 30, what="the receiver to crash")
    assert 0 < first["stored"] < len(files), first["stored"]
    acknowledged = acknowledged_by_send(first, files)
    failed = [Path(f["path"]) for f in first["failed_files"]]
    assert len(failed) == len(files) - first["stored"]

    e2e.receiver.start(STUDYSTREAM_RECEIVER_FAULT_AFTER_STORE="0")
    second = e2e.send(*failed, name="send-2")
    assert second["failed"] == 0
    acknowledged |= acknowledged_by_send(second, failed)

    e2e.wait_all(studies)
    numbers = e2e.assert_nothing_lost_nothing_duplicated(studies, len(files), acknowledged, "receiver kill -9")
    assert numbers["acknowledged"] == len(files)
    e2e.assert_no_phi_in_logs()


@pytest.mark.parametrize("e2e", [ONE_WORKER], indirect=True)
def test_fhir_server_unreachable_during_uploads_then_back(e2e: E2E, tmp_path: Path) -> None:
    files = synth.write_studies(tmp_path / "in", studies=3, series=2, instances=3)
    studies = studies_in(files)
    e2e.remember(studies)
    ready = TopicCollector(e2e.settings, e2e.settings.topic_ready)
    try:
        e2e.fhir.proxy.disable()
        assert e2e.storescu(tmp_path / "in") == len(files)
        wait_for(lambda: {r.study_uid for r in ready.ready} >= set(studies), 30, what="every study ready")
        wait_for(
            lambda: e2e.worker_metric(*UPLOADER_METRICS, "transient") >= 2 * len(studies),
            60,
            what="uploads retried while the FHIR server is unreachable",
        )
        assert not any(e2e.fhir.studies(uid) for uid in studies), "nothing can be on FHIR yet"
        rows = e2e.web_studies()
        assert all(rows[uid]["status"] == "ready" for uid in studies), {u: rows[u]["status"] for u in studies}
        # The outage shows: every study parked, on the API and in /metrics (the oldest one's age).
        outage = wait_for(lambda: _outage(e2e) if _outage(e2e)[0] == len(studies) else None, 30, what="parked")
        assert outage[1] > 0
        e2e.fhir.proxy.enable()

        e2e.wait_all(studies)
    finally:
        ready.close()
    acknowledged = {sop for s in studies.values() for sop in s.instances}
    e2e.assert_nothing_lost_nothing_duplicated(studies, len(files), acknowledged, "FHIR outage")
    e2e.assert_no_phi_in_logs()


@pytest.mark.parametrize("e2e", [OPEN_STUDY], indirect=True)
def test_one_of_two_workers_stopped_mid_stream_the_other_takes_over(e2e: E2E, tmp_path: Path) -> None:
    files = synth.write_studies(tmp_path / "in", studies=6, series=2, instances=4)
    studies = studies_in(files)
    second_halves, owners = _send_first_halves(e2e, studies)
    leaving, staying = sorted(e2e.workers, key=lambda w: -len(owners[w.web_port]))
    handed_over = owners[leaving.web_port]
    assert handed_over, "the stopped worker held open studies"
    leaving.stop()
    assert e2e.send(*second_halves, name="send-2")["stored"] == len(second_halves)

    e2e.wait_all(studies)
    wait_for(lambda: e2e.local_studies(staying) >= set(studies), 30, what="the staying worker to own every study")
    print(f"stopped worker on port {leaving.web_port}; {len(handed_over)} open studies handed over")
    acknowledged = {sop for s in studies.values() for sop in s.instances}
    e2e.assert_nothing_lost_nothing_duplicated(studies, len(files), acknowledged, "one of two workers stopped")
    e2e.assert_no_phi_in_logs()


def _outage(e2e: E2E) -> tuple[int, float]:
    """(parked study revisions, oldest parked age) summed over the live workers' /uploader/metrics."""
    parked, oldest = 0, 0.0
    for worker in e2e.workers:
        if worker.exited():
            continue
        text = httpx.get(f"http://127.0.0.1:{worker.web_port}/uploader/metrics", timeout=15).text
        parked += int(float(re.search(r"^studystream_uploader_parked_studies ([0-9.e+]+)$", text, re.M).group(1)))
        age = float(re.search(r"^studystream_uploader_oldest_parked_seconds ([0-9.e+]+)$", text, re.M).group(1))
        oldest = max(oldest, age)
    return parked, oldest
