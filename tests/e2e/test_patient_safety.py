"""The patient-safe mapping through the real receiver, worker and HAPI: a corrected name reaches the one
Patient, local times stay local, codes say what they are, and a study of two patients is held as a
conflict until `studystream resolve` files it."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from domain.patient import identity_key
from scu import synth
from tests.conftest import ROOT, wait_for, worker_env
from tests.e2e.conftest import E2E, STUDYSTREAM, SentStudy, studies_in

SITE_ZONE = "Asia/Tokyo"
PATIENT_ISSUER_OID = "1.2.826.0.1.3680043.10.1404.77"


def unique() -> str:
    return uuid.uuid4().hex[:10].upper()


def code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def rewrite(path: Path, out: Path, **attributes: Any) -> Path:
    """``path`` saved to ``out`` with ``attributes`` set (a new SOP Instance UID unless one is given)."""
    ds = dcmread(path)
    ds.SOPInstanceUID = attributes.pop("SOPInstanceUID", generate_uid())
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.save_as(out, enforce_file_format=True)
    return out


def one_study(tmp: Path, instances: int) -> list[Path]:
    return synth.write_studies(tmp / "synth", studies=1, series=1, instances=instances, modality="CT")


def dead_letters(e2e: E2E, study_uid: str, reason: str) -> list[dict[str, bytes]]:
    return [
        headers
        for key, _, headers, _ in list(e2e.fhir.dlq.messages)
        if key == study_uid.encode() and headers.get("studystream-reason") == reason.encode()
    ]


def study_row(e2e: E2E, study_uid: str) -> dict[str, Any] | None:
    return e2e.web_studies().get(study_uid)


@pytest.mark.parametrize("e2e", [{"workers": 1, "fhir_default_timezone": SITE_ZONE}], indirect=True)
def test_a_corrected_name_reaches_the_one_patient_and_every_mapped_field_is_what_the_dicom_says(
    e2e: E2E, tmp_path: Path
) -> None:
    first, second = one_study(tmp_path, 2)
    patient_id = f"PS{unique()}"
    sent = tmp_path / "sent"
    sent.mkdir()
    request = Dataset()
    request.PlacerOrderNumberImagingServiceRequest = f"ORD{unique()}"
    request.ReasonForTheRequestedProcedure = "Persistent cough"
    issuer = Dataset()
    issuer.UniversalEntityID, issuer.UniversalEntityIDType = PATIENT_ISSUER_OID, "ISO"
    common: dict[str, Any] = dict(
        PatientID=patient_id,
        IssuerOfPatientID="SAFETYHOSP",
        PatientName="Before^Anna",
        PatientBirthDate="19700101",
        PatientSex="F",
        StudyDate="20260315",
        StudyTime="171700",
        BodyPartExamined="CHEST",
        Laterality="",
        ProcedureCodeSequence=[code("T-D3000", "SRT", "Chest")],
        RequestAttributesSequence=[request],
        InstitutionalDepartmentName="Radiology East",
        NameOfPhysiciansReadingStudy="Reader^Rita",
        IssuerOfPatientIDQualifiersSequence=[issuer],
        ReferringPhysicianName="Smith^John^^Dr",
        PerformingPhysicianName="----",  # a placeholder, not a performer
        StudyDescription="Chest\x01 CT",  # a control character a modality let through
        StudyID="S123",
        ImageLaterality="L",  # every image of the CT series agrees
    )
    files = [rewrite(first, sent / "1.dcm", **common), rewrite(second, sent / "2.dcm", **common)]
    # A key object in its own series: a series modality, but not an acquisition modality of the study.
    ko_series = generate_uid()
    files.append(rewrite(second, sent / "3.dcm", **common, Modality="KO", SeriesInstanceUID=ko_series))
    study: SentStudy = studies_in(files)[str(dcmread(files[0]).StudyInstanceUID)]
    e2e.remember({study.uid: study})
    assert e2e.storescu(*files) == 3

    resource = e2e.wait_study(study)
    assert resource["started"] == "2026-03-15T17:17:00+09:00"  # the site's local time, not 17:17 UTC
    assert [m["code"] for m in resource["modality"]] == ["CT"]
    assert {s["modality"]["code"] for s in resource["series"]} == {"CT", "KO"}
    assert resource["procedureCode"][0]["coding"] == [
        {"system": "http://snomed.info/sct", "code": "51185008", "display": "Chest"}
    ]
    ct = next(s for s in resource["series"] if s["modality"]["code"] == "CT")
    assert ct["bodySite"] == {"system": "http://snomed.info/sct", "code": "43799004", "display": "Chest"}
    placer = [b["identifier"] for b in resource["basedOn"] if b["identifier"]["type"]["coding"][0]["code"] == "PLAC"]
    assert [p["value"] for p in placer] == [request.PlacerOrderNumberImagingServiceRequest]
    assert resource["reasonCode"] == [{"text": "Persistent cough"}]
    assert resource["location"]["display"] == "Radiology East"
    assert [i["display"] for i in resource["interpreter"]] == ["Rita Reader"]

    assert resource["description"] == "Chest CT"
    assert resource["referrer"]["display"] == "Dr John Smith"
    secondary = [i["value"] for i in resource["identifier"] if i.get("use") == "secondary"]
    assert secondary == ["S123"]
    accession = next(i for i in resource["identifier"] if i.get("use") == "usual")
    assert accession["system"] == f"urn:oid:{study.headers[0].IssuerOfAccessionNumberSequence[0].UniversalEntityID}"
    assert ct["laterality"] == {"system": "http://snomed.info/sct", "code": "7771000", "display": "Left"}
    actors = [p["actor"] for s in resource["series"] for p in s.get("performer", [])]
    assert {a["type"] for a in actors} == {"Device", "Organization"}  # no "----" practitioner

    # The issuer's universal id (ISO) names the system, not the local IssuerOfPatientID.
    system, value = f"urn:oid:{PATIENT_ISSUER_OID}", patient_id
    (patient,) = e2e.fhir.patients(system, value)
    assert [n.get("family") for n in patient["name"]] == ["Before"] and patient["birthDate"] == "1970-01-01"
    assert e2e.fhir.validate(resource) == []
    assert e2e.fhir.validate(patient) == []

    # A resend of the study with the patient's name and birth date corrected, one more instance.
    corrected = rewrite(
        first, sent / "4.dcm", **{**common, "PatientName": "After^Anna", "PatientBirthDate": "19700102"}
    )
    assert e2e.storescu(corrected, name="storescu-corrected") == 1

    def patient_corrected() -> dict[str, Any] | None:
        found = e2e.fhir.patients(system, value)
        return found[0] if len(found) == 1 and [n.get("family") for n in found[0]["name"]] == ["After"] else None

    updated = wait_for(patient_corrected, 120, interval=0.5, what="the corrected name on the Patient")
    assert isinstance(updated, dict)
    assert updated["id"] == patient["id"] and updated["birthDate"] == "1970-01-02"
    assert len(e2e.fhir.patients(system, value)) == 1
    final = e2e.fhir.wait_study(study.uid, instances=4)
    assert final["subject"]["reference"].endswith(f"Patient/{patient['id']}")
    assert e2e.fhir.validate(updated) == []
    e2e.assert_no_phi_in_logs()


@pytest.mark.parametrize("e2e", [{"workers": 1}], indirect=True)
def test_a_study_of_two_patients_is_held_as_a_conflict_until_an_operator_resolves_it(e2e: E2E, tmp_path: Path) -> None:
    first, second = one_study(tmp_path, 2)
    sent = tmp_path / "sent"
    sent.mkdir()
    ids = (f"PA{unique()}", f"PB{unique()}")
    files = [
        rewrite(first, sent / "a.dcm", PatientID=ids[0], IssuerOfPatientID="CONFLICTHOSP", PatientName="Alpha^Ann"),
        rewrite(second, sent / "b.dcm", PatientID=ids[1], IssuerOfPatientID="CONFLICTHOSP", PatientName="Beta^Bob"),
    ]
    study = studies_in(files)[str(dcmread(files[0]).StudyInstanceUID)]
    e2e.remember({study.uid: study})
    assert e2e.storescu(*files) == 2

    wait_for(lambda: dead_letters(e2e, study.uid, "patient_conflict"), 120, what="the conflict dead-lettered")
    row = wait_for(
        lambda: (r := study_row(e2e, study.uid)) and r["status"] == "conflict" and r,
        30,
        what="the study listed as conflict",
    )
    assert isinstance(row, dict)
    system = e2e.patient_identifier(study)[0]
    keys = {identity_key(system, pid): pid for pid in ids}
    assert {p["key"] for p in row["patients"]} == set(keys)
    assert not any(pid in str(row) for pid in ids)  # identities by hash only, without patient data
    assert e2e.fhir.studies(study.uid) == []  # nothing was filed under either patient

    chosen = identity_key(system, ids[1])
    worker = e2e.workers[0]
    done = subprocess.run(
        [STUDYSTREAM, "resolve", study.uid, "--patient", chosen, "--web-url", f"http://127.0.0.1:{worker.web_port}"],
        cwd=ROOT,
        env=worker_env(e2e.settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr

    resource = e2e.fhir.wait_study(study.uid, instances=2)
    (patient,) = e2e.fhir.patients(system, ids[1])
    assert resource["subject"]["reference"].endswith(f"Patient/{patient['id']}")
    assert e2e.fhir.patients(system, ids[0]) == []
    row = wait_for(lambda: (r := study_row(e2e, study.uid)) and r["status"] == "published" and r, 30, what="published")
    assert isinstance(row, dict) and row["resolved_patient"] == chosen
    e2e.assert_no_phi_in_logs()
