"""The uploader end to end: ready records on a real broker → `studystream worker` → the real HAPI FHIR server."""

from __future__ import annotations

import asyncio
import uuid
from urllib.parse import quote

import httpx
import orjson
import pytest
from msgspec.structs import replace

from agents.fhir_writer import StudyWriter, UploaderMetrics
from app.settings import Settings
from domain import dead_letters, fhir_mapping, fhir_resources
from domain import upload as rules
from domain.fhir_mapping import MappingOptions, stored_mapping_version, stored_revision
from domain.fhir_values import EN_REPRESENTATION
from tests.conftest import unique_uid, wait_for
from tests.uploader.conftest import Pipeline, wait_metric
from tests.uploader.factories import make_ready, with_counts

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
    assert [m["code"] for m in study["modality"]] == ["CT"]  # SR is no acquisition modality (CID 29)
    assert study["started"] == "2024-05-01T10:15:00+02:00"
    assert [(s["uid"], s["numberOfInstances"], s["modality"]["code"]) for s in study["series"]] == [
        (f"{ready.study_uid}.1", 3, "CT"),
        (f"{ready.study_uid}.2", 2, "CT"),
        (f"{ready.study_uid}.3", 1, "SR"),
    ]
    assert [i["uid"] for i in study["series"][0]["instance"]] == [f"{ready.study_uid}.1.{n}" for n in (1, 2, 3)]
    assert stored_revision(study, OPTIONS) == (1, 1)

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
    assert stored_revision(updated, OPTIONS) == (1, 2)
    # The tag of revision 1 is removed right after the update, not carried over for good.
    wait_for(lambda: _revision_tags(pipeline.studies(uid)[0]) == ["1.2"], 30, what="one revision tag")

    skipped = pipeline.metric("skipped")
    pipeline.produce([second, first])  # redelivery, and an old revision replayed
    wait_metric(pipeline, "skipped", skipped + 2)

    (study,) = pipeline.studies(uid)
    assert study["meta"]["versionId"] == updated["meta"]["versionId"]
    assert study["numberOfInstances"] == 3 and stored_revision(study, OPTIONS) == (1, 2)
    assert len(pipeline.patients(ISSUER_SYSTEM, patient_id)) == 1


def test_old_revision_is_not_written_over_a_higher_one_found_on_the_server(pipeline: Pipeline) -> None:
    """Without the outcomes table's help (e.g. a replay after its state was reset): the server's tag decides."""
    writer = _writer(pipeline)
    uid = unique_uid()
    newer = make_ready(uid, patient_id=new_patient_id(), revision=3, series=(("CT", "CHEST", 4),))
    older = with_counts(
        replace(newer, revision=2, series=(replace(newer.series[0], instances=newer.series[0].instances[:1]),))
    )
    next_generation = with_counts(replace(older, generation=2, revision=1))

    async def run() -> list[str]:
        try:
            return [_kind(await writer.upload(r, 0, 0)) for r in (newer, older, next_generation)]
        finally:
            await writer.client.close()

    # A revision of a later state generation (after `replay --reset-state`) comes after every older one.
    assert asyncio.run(run()) == ["published", "superseded", "published"]
    (study,) = pipeline.studies(uid)
    assert stored_revision(study, OPTIONS) == (2, 1) and study["numberOfInstances"] == 1
    assert _revision_tags(study) == ["2.1"]


def test_a_revision_written_by_an_older_mapping_is_written_again(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What replaying imaging.study.ready after a mapping fix relies on: same revision, newer mapping."""
    writer = _writer(pipeline)
    ready = make_ready(unique_uid(), patient_id=new_patient_id(), revision=1, series=(("CT", "CHEST", 2),))

    async def upload() -> str:
        return _kind(await writer.upload(ready, 0, 0))

    async def run() -> list[str]:
        try:
            with monkeypatch.context() as old_mapping:
                for module in (fhir_mapping, fhir_resources):  # the tag written, and the one compared
                    old_mapping.setattr(module, "MAPPING_VERSION", fhir_mapping.MAPPING_VERSION - 1)
                first = await upload()
            return [first, await upload(), await upload()]
        finally:
            await writer.client.close()

    assert asyncio.run(run()) == ["published", "published", "superseded"]
    (study,) = pipeline.studies(ready.study_uid)
    assert study["meta"]["versionId"] == "2"  # one resource, rewritten once
    assert stored_mapping_version(study) == fhir_mapping.MAPPING_VERSION


def _direct(pipeline: Pipeline) -> Settings:
    """The worker's settings, but straight to HAPI and with its own bundles directory."""
    return pipeline.settings.model_copy(
        update={"fhir_base_url": pipeline.fhir_url, "bundles_dir": pipeline.settings.bundles_dir.parent / "direct"}
    )


def _writer(pipeline: Pipeline) -> StudyWriter:
    """What the uploader agent writes with, without Kafka or its table."""
    return StudyWriter(_direct(pipeline), UploaderMetrics(lambda: (0, 0.0)))


def _kind(result: tuple[object, rules.AttemptCounts, rules.Step]) -> str:
    attempt, _, step = result
    if step.action is not rules.Action.DONE:
        return step.action.value
    return "superseded" if attempt.superseded else "published"  # type: ignore[attr-defined]


def _revision_tags(resource: dict) -> list[str]:
    return [t["code"] for t in resource["meta"]["tag"] if t["system"] == OPTIONS.revision_tag_system]


def test_two_new_studies_of_one_new_patient_at_once_yield_one_patient(pipeline: Pipeline) -> None:
    # Through the worker: both studies produced at once.
    patient_id = new_patient_id()
    a, b = make_ready(patient_id=patient_id), make_ready(patient_id=patient_id)
    pipeline.produce([a, b])
    study_a, study_b = pipeline.wait_study(a.study_uid), pipeline.wait_study(b.study_uid)
    (patient,) = pipeline.patients(ISSUER_SYSTEM, patient_id)
    assert study_a["subject"]["reference"] == study_b["subject"]["reference"] == f"Patient/{patient['id']}"

    # Truly concurrent (as two workers would be): four uploads of one new patient at the same moment.
    writer = _writer(pipeline)
    patient_id = new_patient_id()
    studies = [make_ready(patient_id=patient_id) for _ in range(4)]

    async def run() -> list:
        try:
            return await asyncio.gather(*(writer.upload(s, 0, 0) for s in studies))
        finally:
            await writer.client.close()

    results = asyncio.run(run())
    assert [_kind(r) for r in results] == ["published"] * 4
    # Whether HAPI raced (409 to the losers, then retried) depends on timing; one Patient is the promise.
    print(f"attempts for 4 concurrent first uploads of one patient: {sum(r[1].total for r in results)}")
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


def test_fhir_down_far_longer_than_any_attempt_budget_parks_the_study_visibly_and_delivers_it_once_back(
    pipeline: Pipeline,
) -> None:
    ready = make_ready(patient_id=new_patient_id())
    dead_before = len(pipeline.dlq.messages)
    transient_before = pipeline.metric("transient", "studystream_uploader_attempts_total", "verdict")
    pipeline.proxy.disable()
    try:
        pipeline.produce([ready])
        # 25 s of attempts at a 1 s backoff cap: far more than the 12 attempts that used to end in the DLQ.
        wait_for(
            lambda: (
                pipeline.metric("transient", "studystream_uploader_attempts_total", "verdict") >= transient_before + 15
            ),
            90,
            what="15 more attempts while the server is away",
        )
        oldest = float(_metric_line(pipeline, "studystream_uploader_oldest_parked_seconds"))
        assert oldest >= 5 and float(_metric_line(pipeline, "studystream_uploader_parked_studies")) >= 1
        assert "FHIR upload outage: 1 study revision(s) parked" in pipeline.worker.log()
        assert pipeline.studies(ready.study_uid) == []
    finally:
        pipeline.proxy.enable()
    study = pipeline.wait_study(ready.study_uid)
    assert len(pipeline.studies(ready.study_uid)) == 1 and study["numberOfInstances"] == 2
    assert [m for m in pipeline.dlq.messages[dead_before:] if m[0] == ready.study_uid.encode()] == []
    wait_for(lambda: float(_metric_line(pipeline, "studystream_uploader_parked_studies")) == 0, 30, what="unparked")


def _metric_line(pipeline: Pipeline, name: str) -> str:
    text = httpx.get(f"http://127.0.0.1:{pipeline.worker.web_port}/uploader/metrics", timeout=5).text
    return next(line.split()[1] for line in text.splitlines() if line.startswith(f"{name} "))


def test_patient_ids_with_search_syntax_characters_each_get_their_own_patient(pipeline: Pipeline) -> None:
    issuer = f"TOK{uuid.uuid4().hex[:10]}"  # this run's own identifier system: the IDs themselves are fixed
    ids = ["12,34", "12", "34", "a|b", "$1", "p q", "back\\slash"]
    records = [make_ready(patient_id=pid, issuer=issuer) for pid in ids]
    pipeline.produce(records)
    system = f"urn:studystream:issuer:{issuer}"
    for pid, record in zip(ids, records, strict=True):
        study = pipeline.wait_study(record.study_uid)
        escaped = pid.replace("\\", "\\\\").replace(",", "\\,").replace("|", "\\|").replace("$", "\\$")
        (patient,) = pipeline.search("Patient", f"identifier={quote(system)}|{quote(escaped)}")
        assert patient["identifier"][0]["value"] == pid
        assert study["subject"]["reference"] == f"Patient/{patient['id']}", pid
    subjects = {pipeline.studies(r.study_uid)[0]["subject"]["reference"] for r in records}
    assert len(subjects) == len(ids)


def test_a_conflict_that_never_resolves_is_dead_lettered_after_its_retries_with_the_cause(pipeline: Pipeline) -> None:
    """Two Patients with one identifier, made outside StudyStream: every conditional create is answered 412."""
    duplicated = f"DUP{uuid.uuid4().hex[:12]}"
    for _ in range(2):
        created = httpx.post(
            f"{pipeline.fhir_url}/Patient",
            json={"resourceType": "Patient", "identifier": [{"system": ISSUER_SYSTEM, "value": duplicated}]},
            headers={"Content-Type": "application/fhir+json"},
            timeout=30,
        )
        assert created.status_code == 201
    bad = make_ready(patient_id=duplicated)
    good = make_ready(patient_id=new_patient_id())
    pipeline.produce([bad])
    pipeline.produce([good])

    def dead_lettered() -> list:
        return [m for m in pipeline.dlq.messages if m[0] == bad.study_uid.encode()]

    ((_, value, headers, _),) = wait_for(dead_lettered, 90, what="the conflicting study in the DLQ")
    assert headers[dead_letters.STAGE] == b"uploader"
    assert headers[dead_letters.REASON] == b"fhir_conflict"
    assert headers[dead_letters.HTTP_STATUS] == b"412"
    message = headers[dead_letters.MESSAGE].decode()
    conflicts = pipeline.settings.uploader_conflict_attempts
    assert f"after {conflicts} conflicting attempts" in message and "HAPI-0958" in message
    assert duplicated not in message  # the server's diagnostics quote the identifier: detail header only
    assert duplicated.encode() in headers[dead_letters.DETAIL]
    due = f"{pipeline.settings.app_id}-upload-due".encode()  # parked between its attempts: back through the due topic
    assert headers[dead_letters.SOURCE_TOPIC] in (pipeline.settings.topic_ready.encode(), due)
    outcome = orjson.loads(headers[dead_letters.OPERATION_OUTCOME])
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["severity"] == "error"
    assert orjson.loads(value)["study_uid"] == bad.study_uid  # the original record, to redrive once fixed

    pipeline.wait_study(good.study_uid)
    assert pipeline.studies(bad.study_uid) == []
    assert duplicated not in pipeline.worker.log()


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
