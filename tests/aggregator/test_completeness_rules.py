"""Completeness rules by source through a real `studystream worker` on the real broker.

One worker, four studies: a CR study under a 2 s rule is ready within seconds while CT studies under a
120 s rule are not; a Storage Commitment completes a CT study from a trusted AE at once but not one from
an AE trusted for nothing. The ready records and the web API say which signal completed each study, and
the completed studies reach HAPI FHIR while the open ones do not.
"""

from __future__ import annotations

from pathlib import Path

import httpx
from msgspec.structs import replace
from pydantic import SecretStr

from app.settings import Settings
from domain.events import CommitmentRequest, InstanceEvent, encode_commitment_request
from tests.aggregator.conftest import SyntheticStudy, TopicCollector, Worker, new_worker, produce_events, produce_raw
from tests.conftest import wait_for

RULES = "modality=CR:quiet=2s; ae=OLD_PACS:quiet=120s,trust=none; modality=CT:quiet=120s"
TOKEN = "completeness-test-token"


def from_source(study: SyntheticStudy, calling_ae: str, modality: str) -> list[InstanceEvent]:
    return [replace(e, calling_ae=calling_ae, modality=modality) for e in study.events()]


def on_fhir(settings: Settings, study_uid: str) -> list[dict[str, object]]:
    response = httpx.get(
        f"{settings.fhir_base_url}/ImagingStudy?identifier=urn:dicom:uid|urn:oid:{study_uid}",
        headers={"Cache-Control": "no-cache"},
        timeout=30,
    )
    response.raise_for_status()
    return [e["resource"] for e in response.json().get("entry") or ()]


def commitment(study: SyntheticStudy) -> tuple[bytes, bytes]:
    request = CommitmentRequest(study.uid, f"2.25.{study.uid[-12:]}", tuple(e.sop_instance_uid for e in study.events()))
    return request.key, encode_commitment_request(request)


def test_each_source_s_rule_decides_when_its_study_is_ready_and_the_signal_is_recorded(
    fhir: Settings, aggregator_settings: Settings, workers: list[Worker], ready_topic: TopicCollector, tmp_path: Path
) -> None:
    settings = aggregator_settings.model_copy(
        update={
            "quiet_period": 300.0,
            "completeness_rules": RULES,
            "web_token": SecretStr(TOKEN),
            "web_host": "localhost",
        }
    )
    cr, ct, ct_committed, pacs_committed = (SyntheticStudy(series=1, per_series=3) for _ in range(4))
    worker = new_worker(workers, settings, tmp_path, "w1").start()
    worker.wait_started()

    produce_events(
        settings,
        from_source(cr, "CR_ROOM1", "CR")
        + from_source(ct, "CT1", "CT")
        + from_source(ct_committed, "CT1", "CT")
        + from_source(pacs_committed, "OLD_PACS", "CT"),
    )
    produce_raw(settings, [commitment(ct_committed), commitment(pacs_committed)])

    wait_for(lambda: ready_topic.ready_for(cr.uid), 30, what="the CR study under its 2 s rule")
    wait_for(lambda: ready_topic.ready_for(ct_committed.uid), 30, what="the committed CT study from a trusted AE")
    wait_for(
        lambda: "not trusted for commitment: waits for the quiet period" in worker.log(),
        30,
        what="the untrusted commitment logged",
    )
    (cr_record,) = ready_topic.ready_for(cr.uid)
    (committed_record,) = ready_topic.ready_for(ct_committed.uid)
    assert (cr_record.number_of_instances, cr_record.completed_by) == (3, "quiet_period")
    assert committed_record.completed_by == "commitment"
    # 120 s rules: neither the plain CT study nor the one committed by an untrusted AE is ready yet.
    assert not ready_topic.ready_for(ct.uid)
    assert not ready_topic.ready_for(pacs_committed.uid)
    # The worker logs a revision once its record is acknowledged, which may be after we consumed it.
    ready_line = f"study {cr.uid} revision 1 ready: 1 series, 3 instances"
    wait_for(lambda: ready_line in worker.log(), 15, what="the CR study's ready line logged")
    (logged,) = [line for line in worker.log().splitlines() if ready_line in line]
    assert logged.endswith("completed by quiet_period")

    headers = {"Authorization": f"Bearer {TOKEN}"}

    def detail(uid: str) -> dict[str, object]:
        response = httpx.get(f"http://localhost:{worker.web_port}/api/studies/{uid}", headers=headers, timeout=15)
        assert response.status_code == 200, response.text[:300]
        return response.json()

    shown_cr = wait_for(lambda: (d := detail(cr.uid))["aggregator_status"] == "published" and d, 15, what="CR shown")
    assert isinstance(shown_cr, dict) and shown_cr["completed_by"] == "quiet_period"
    assert shown_cr["completeness"]["quiet_period_seconds"] == 2.0
    assert shown_cr["completeness"]["sources"] == [{"calling_ae": "CR_ROOM1", "modality": "CR"}]
    assert detail(ct_committed.uid)["completed_by"] == "commitment"
    open_pacs = detail(pacs_committed.uid)
    assert (open_pacs["status"], open_pacs["completed_by"]) == ("receiving", None)
    assert open_pacs["completeness"] == {
        "quiet_period_seconds": 120.0,
        "trusted_signals": [],
        "sources": [{"calling_ae": "OLD_PACS", "modality": "CT"}],
        "sources_truncated": False,
    }
    assert 100 < open_pacs["quiet_remaining_seconds"] <= 120

    (imaging_study,) = wait_for(lambda: on_fhir(settings, cr.uid), 30, what="the CR study on FHIR")
    assert (imaging_study["status"], imaging_study["numberOfInstances"]) == ("available", 3)
    wait_for(lambda: on_fhir(settings, ct_committed.uid), 30, what="the committed CT study on FHIR")
    assert on_fhir(settings, pacs_committed.uid) == [] and on_fhir(settings, ct.uid) == []
