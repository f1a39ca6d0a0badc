"""DICOM in, FHIR out: synthetic studies (every catalogue patient, so every character set, and several
modalities, 1 to 500 instances) sent by dcmtk storescu and by `studystream send` into the receiver, two
workers, HAPI."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom.charset import convert_encodings, encode_string

from scu import synth
from scu.synth_catalog import PATIENTS
from tests.conftest import wait_for
from tests.e2e.conftest import E2E, SentStudy, phi_hits, phi_terms, studies_in


def check_study_on_fhir(e2e: E2E, study: SentStudy) -> None:
    """One ImagingStudy with exactly the sent series and instances and the mapped fields; one Patient."""
    resource = e2e.wait_study(study)
    found = e2e.fhir.studies(study.uid)
    assert len(found) == 1, f"{len(found)} ImagingStudy resources for {study.uid}"
    assert resource["numberOfSeries"] == len(study.series)
    series_on_fhir = {s["uid"]: {i["uid"] for i in s.get("instance", [])} for s in resource["series"]}
    assert series_on_fhir == study.series
    first = study.headers[0]
    assert {s["modality"]["code"] for s in resource["series"]} == {str(first.Modality)}
    assert resource["status"] == "available"
    accession = [i for i in resource["identifier"] if i.get("type", {}).get("coding", [{}])[0].get("code") == "ACSN"]
    assert [i["value"] for i in accession] == [str(first.AccessionNumber)]
    assert resource.get("started", "").startswith(f"{first.StudyDate[:4]}-{first.StudyDate[4:6]}-{first.StudyDate[6:]}")

    system, value = e2e.patient_identifier(study)
    patients = e2e.fhir.patients(system, value)
    assert len(patients) == 1, f"{len(patients)} Patients for {system}|{value}"
    assert resource["subject"]["reference"].endswith(f"Patient/{patients[0]['id']}")
    family = str(first.PatientName).split("=")[0].split("^")[0]
    assert family in [n.get("family") for n in patients[0]["name"]]


def test_studies_from_storescu_and_studystream_send_arrive_once_each_on_fhir(e2e: E2E, tmp_path: Path) -> None:
    # One run of consecutive studies covers the whole patient catalogue, hence every character set.
    files = synth.write_studies(tmp_path / "in", studies=len(PATIENTS), series=2, instances=3)
    # The upper bound: one study of 500 instances.
    larger = synth.write_studies(tmp_path / "in", studies=1, series=5, instances=100, modality="MR")
    studies = studies_in(files + larger)
    e2e.remember(studies)
    assert len({str(s.headers[0].PatientName) for s in studies.values()}) == len(PATIENTS)
    study_dirs = sorted((tmp_path / "in").iterdir())
    by_dcmtk, by_send = study_dirs[::2], study_dirs[1::2]
    sent_by_dcmtk = sum(len(studies[d.name].instances) for d in by_dcmtk)

    acked_dcmtk = e2e.storescu(*by_dcmtk)
    summary = e2e.send(*by_send)
    assert acked_dcmtk == sent_by_dcmtk
    assert summary["stored"] == len(files) + len(larger) - sent_by_dcmtk and summary["failed"] == 0

    for study in studies.values():
        check_study_on_fhir(e2e, study)

    def all_published() -> bool:
        rows = e2e.web_studies()
        return all(rows.get(uid, {}).get("status") == "published" for uid in studies)

    wait_for(all_published, 30, interval=0.5, what="every study listed as published by the web view")
    rows = e2e.web_studies()
    for uid, study in studies.items():
        assert (rows[uid]["series_count"], rows[uid]["instance_count"]) == (len(study.series), len(study.instances))
        assert e2e.bundle_path(uid, rows[uid]["revision"]).is_file()

    acknowledged = {sop for s in studies.values() for sop in s.instances}
    numbers = e2e.assert_nothing_lost_nothing_duplicated(studies, len(acknowledged), acknowledged, "happy path")
    assert numbers["published"] == len(acknowledged)
    e2e.assert_no_phi_in_logs()


def test_the_phi_check_finds_names_and_ids_in_any_encoding(tmp_path: Path) -> None:
    """The log check itself can fail: each encoding of a name, a bare component, or an ID is a hit."""
    japanese, latin1 = (synth.generate_studies(seed=seed)[0] for seed in (2, 1))  # catalogue patients 2 and 1
    terms = phi_terms([japanese, latin1])
    family_latin1 = str(latin1.PatientName).split("^")[0].encode("latin-1")  # e.g. "Müller" as ISO_IR 100
    given = str(japanese.PatientName).split("=")[1].split("^")[1]
    given_iso2022 = encode_string(given, convert_encodings(["", "ISO 2022 IR 87"]))
    assert given_iso2022 != given.encode()
    logs = {
        "latin1.log": b"stored " + family_latin1 + b" ok\n",
        "iso2022.log": b"name " + given_iso2022 + b"\n",
        "escaped.log": repr(str(japanese.PatientName)).encode() + b"\n",
        "id.log": f"patient {japanese.PatientID}\n".encode(),
        "clean.log": b"study 1.2.3 revision 1 ready: 2 series, 6 instances\n",
    }
    for name, content in logs.items():
        (tmp_path / name).write_bytes(content)
    hits = phi_hits(sorted(tmp_path.glob("*.log")), terms)
    assert {hit.split(":")[0] for hit in hits} == set(logs) - {"clean.log"}


@pytest.mark.parametrize("e2e", [{"workers": 1, "quiet_period": 300.0}], indirect=True)
def test_storage_commitment_puts_the_study_on_fhir_without_waiting_for_the_quiet_period(
    e2e: E2E, tmp_path: Path
) -> None:
    files = synth.write_studies(tmp_path / "in", studies=1, series=2, instances=4)
    (study,) = studies_in(files).values()
    e2e.remember({study.uid: study})
    started = time.monotonic()

    summary = e2e.send(tmp_path / "in", options=("--storage-commitment", "--commitment-timeout", "30"))

    assert summary["stored"] == len(files) and summary["per_study"][0]["storage_commitment"] == "committed"
    check_study_on_fhir(e2e, study)  # waits for the ImagingStudy with every instance
    elapsed = time.monotonic() - started
    print(f"\nstorage commitment: {len(files)} instances sent, ImagingStudy readable after {elapsed:.1f} s")
    assert elapsed < 120, "the 300 s quiet period decided, not the commitment"
    e2e.assert_no_phi_in_logs()
