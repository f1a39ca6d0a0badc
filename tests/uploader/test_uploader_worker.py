"""The uploader end to end: ready records on a real broker → `studystream worker` → the real HAPI FHIR server."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import orjson
import pytest

from agents.uploader import StudyUploader
from app.settings import Settings
from domain import fhir_mapping
from domain.fhir_mapping import MappingOptions, stored_mapping_version, stored_revision
from domain.fhir_values import EN_REPRESENTATION
from domain.ready import ReadySeries
from tests.conftest import unique_uid, wait_for
from tests.uploader.conftest import Pipeline, wait_metric
from tests.uploader.factories import make_ready

ISSUER_SYSTEM = "urn:studystream:issuer:HOSP"
OPTIONS = MappingOptions()


def new_patient_id() -> str:
    return f"PID-{uuid.uuid4().hex[:12]}"


def test_three_series_study_becomes_one_valid_imaging_study_with_its_patient(pipeline: Pipeline) -> None:
    patient_id = new_patient_id()
    ready = make_ready(patient_id=patient_id, series=(("CT", "CHEST", 3), ("CT", "CHEST", 2), ("SR", "", 1)))
    pipeline.produce([ready])

    study = pipeline.wait_study(ready.study_uid)
    identifiers = {i["system"]: i["value"] for i in study["identifier"]}
    assert identifiers["urn:dicom:uid"] == f"urn:oid:{ready.study_uid}"
    assert identifiers["urn:oid:1.2.3.4"] == "ACC1"
    assert (study["numberOfSeries"], study["numberOfInstances"]) == (3, 6)
    assert [m["code"] for m in study["modality"]] == ["CT", "SR"]
    assert study["started"] == "2024-05-01T10:15:00+02:00"
    assert [(s["uid"], s["numberOfInstances"], s["modality"]["code"]) for s in study["series"]] == [
        (f"{ready.study_uid}.1", 3, "CT"),
        (f"{ready.study_uid}.2", 2, "CT"),
        (f"{ready.study_uid}.3", 1, "SR"),
    ]
    assert [i["uid"] for i in study["series"][0]["instance"]] == [f"{ready.study_uid}.1.{n}" for n in (1, 2, 3)]
    assert stored_revision(study, OPTIONS) == 1

    (patient,) = pipeline.patients(ISSUER_SYSTEM, patient_id)
    assert study["subject"]["reference"] == f"Patient/{patient['id']}"
    assert pipeline.validate(study) == []
    assert pipeline.validate(patient) == []

    saved = pipeline.settings.bundles_dir / f"{ready.study_uid}-r1.json"
    assert orjson.loads(saved.read_bytes())["type"] == "transaction"


def test_redelivery_old_revision_and_revision_2_keep_one_study_updated_in_place(pipeline: Pipeline) -> None:
    patient_id = new_patient_id()
    uid = unique_uid()
    first = make_ready(uid, patient_id=patient_id, revision=1, series=(("CT", "CHEST", 2),))
    second = make_ready(uid, patient_id=patient_id, revision=2, series=(("CT", "CHEST", 2), ("SR", "", 1)))
    pipeline.produce([first])
    created = pipeline.wait_study(uid, instances=2)

    pipeline.produce([second])
    updated = pipeline.wait_study(uid, instances=3)
    assert updated["id"] == created["id"]  # updated in place
    assert stored_revision(updated, OPTIONS) == 2

    skipped = pipeline.metric("skipped")
    pipeline.produce([second, first])  # redelivery, and an old revision replayed
    wait_metric(pipeline, "skipped", skipped + 2)

    (study,) = pipeline.studies(uid)
    assert study["meta"]["versionId"] == updated["meta"]["versionId"]
    assert study["numberOfInstances"] == 3 and stored_revision(study, OPTIONS) == 2
    assert len(pipeline.patients(ISSUER_SYSTEM, patient_id)) == 1


def test_old_revision_is_not_written_over_a_higher_one_found_on_the_server(pipeline: Pipeline) -> None:
    """Without the outcomes table's help (e.g. a replay after its state was reset): the server's tag decides."""
    uploader = StudyUploader(_direct(pipeline), None)  # type: ignore[arg-type]  # upload() needs no table
    uid = unique_uid()
    newer = make_ready(uid, patient_id=new_patient_id(), revision=3, series=(("CT", "CHEST", 4),))
    older = dataclasses.replace(newer, revision=2, series=newer.series[:1])

    async def run() -> tuple[str, str]:
        try:
            published = await uploader.upload(newer, 0)
            replayed = await uploader.upload(older, 0)
            return published.kind, replayed.kind
        finally:
            await uploader.client.close()

    assert asyncio.run(run()) == ("published", "superseded")
    (study,) = pipeline.studies(uid)
    assert stored_revision(study, OPTIONS) == 3 and study["numberOfInstances"] == 4


def test_a_revision_written_by_an_older_mapping_is_written_again(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What replaying imaging.study.ready after a mapping fix relies on: same revision, newer mapping."""
    uploader = StudyUploader(_direct(pipeline), None)  # type: ignore[arg-type]  # upload() needs no table
    ready = make_ready(unique_uid(), patient_id=new_patient_id(), revision=1, series=(("CT", "CHEST", 2),))

    async def upload() -> str:
        return (await uploader.upload(ready, 0)).kind

    async def run() -> list[str]:
        try:
            with monkeypatch.context() as old_mapping:
                old_mapping.setattr(fhir_mapping, "MAPPING_VERSION", fhir_mapping.MAPPING_VERSION - 1)
                first = await upload()
            return [first, await upload(), await upload()]
        finally:
            await uploader.client.close()

    assert asyncio.run(run()) == ["published", "published", "superseded"]
    (study,) = pipeline.studies(ready.study_uid)
    assert study["meta"]["versionId"] == "2"  # one resource, rewritten once
    assert stored_mapping_version(study) == fhir_mapping.MAPPING_VERSION


def _direct(pipeline: Pipeline) -> Settings:
    """The worker's settings, but straight to HAPI and with its own bundles directory."""
    return pipeline.settings.model_copy(
        update={"fhir_base_url": pipeline.fhir_url, "bundles_dir": pipeline.settings.bundles_dir.parent / "direct"}
    )


def test_two_new_studies_of_one_new_patient_at_once_yield_one_patient(pipeline: Pipeline) -> None:
    # Through the worker: both studies produced at once.
    patient_id = new_patient_id()
    a, b = make_ready(patient_id=patient_id), make_ready(patient_id=patient_id)
    pipeline.produce([a, b])
    study_a, study_b = pipeline.wait_study(a.study_uid), pipeline.wait_study(b.study_uid)
    (patient,) = pipeline.patients(ISSUER_SYSTEM, patient_id)
    assert study_a["subject"]["reference"] == study_b["subject"]["reference"] == f"Patient/{patient['id']}"

    # Truly concurrent (as two workers would be): four uploads of one new patient at the same moment.
    uploader = StudyUploader(_direct(pipeline), None)  # type: ignore[arg-type]
    patient_id = new_patient_id()
    studies = [make_ready(patient_id=patient_id) for _ in range(4)]

    async def run() -> list:
        try:
            return await asyncio.gather(*(uploader.upload(s, 0) for s in studies))
        finally:
            await uploader.client.close()

    results = asyncio.run(run())
    assert [r.kind for r in results] == ["published"] * 4
    # Whether HAPI raced (409 to the losers, then retried) depends on timing; one Patient is the promise.
    print(f"attempts for 4 concurrent first uploads of one patient: {sum(r.attempts for r in results)}")
    (patient,) = pipeline.patients(ISSUER_SYSTEM, patient_id)
    for study in studies:
        (stored,) = pipeline.studies(study.study_uid)
        assert stored["subject"]["reference"] == f"Patient/{patient['id']}"


def test_fhir_server_unreachable_during_upload_then_back_delivers_once(pipeline: Pipeline) -> None:
    patient_id = new_patient_id()
    ready = make_ready(patient_id=patient_id, series=(("MR", "KNEE", 2),))
    parked = pipeline.metric("parked")
    pipeline.proxy.disable()
    try:
        pipeline.produce([ready])
        wait_metric(pipeline, "parked", parked + 2)  # tried inline, parked, tried again from the retry topic
        assert pipeline.studies(ready.study_uid) == []
    finally:
        pipeline.proxy.enable()

    study = pipeline.wait_study(ready.study_uid)
    assert study["series"][0]["laterality"]["code"] == "7771000"
    assert len(pipeline.studies(ready.study_uid)) == 1
    assert len(pipeline.patients(ISSUER_SYSTEM, patient_id)) == 1


def test_rejected_bundle_goes_to_dlq_with_operation_outcome_and_later_studies_pass(pipeline: Pipeline) -> None:
    bad = make_ready(patient_id=new_patient_id())
    # Series number beyond DICOM IS's 32-bit range: HAPI refuses to parse the bundle (HTTP 400).
    out_of_range = dataclasses.replace(bad.series[0].info, number=3_000_000_000)
    bad = dataclasses.replace(bad, series=(ReadySeries(out_of_range, bad.series[0].instances),))
    good = make_ready(patient_id=new_patient_id())
    pipeline.produce([bad])
    pipeline.produce([good])

    def dead_lettered() -> list:
        return [m for m in pipeline.dlq.messages if m[0] == bad.study_uid.encode()]

    ((_, value, headers, _),) = wait_for(dead_lettered, 60, what="the rejected study in the DLQ")
    assert headers["studystream-stage"] == b"uploader"
    assert headers["studystream-http-status"] == b"400"
    outcome = orjson.loads(headers["studystream-operation-outcome"])
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["severity"] == "error"
    assert orjson.loads(value)["study_uid"] == bad.study_uid  # the original record, to replay once fixed

    pipeline.wait_study(good.study_uid)
    assert pipeline.studies(bad.study_uid) == []


def test_japanese_and_korean_names_become_one_human_name_per_component_group(pipeline: Pipeline) -> None:
    japanese = make_ready(patient_id=new_patient_id(), name="Yamada^Tarou=山田^太郎=やまだ^たろう")
    korean = make_ready(patient_id=new_patient_id(), name="Hong^Gildong=洪^吉洞=홍^길동")
    pipeline.produce([japanese, korean])
    expected = {
        japanese.patient.id: [("Yamada", "Tarou", "ABC"), ("山田", "太郎", "IDE"), ("やまだ", "たろう", "SYL")],
        korean.patient.id: [("Hong", "Gildong", "ABC"), ("洪", "吉洞", "IDE"), ("홍", "길동", "SYL")],
    }
    for ready in (japanese, korean):
        pipeline.wait_study(ready.study_uid)
        (patient,) = pipeline.patients(ISSUER_SYSTEM, ready.patient.id)
        names = [
            (n["family"], n["given"][0], n["extension"][0]["valueCode"])
            for n in patient["name"]
            if n["extension"][0]["url"] == EN_REPRESENTATION
        ]
        assert names == expected[ready.patient.id]
        assert pipeline.validate(patient) == []
