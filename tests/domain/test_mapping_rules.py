"""The mapping's meaning rules (issue: patient-safe mapping): local time, codes, identifiers, the fields the
DICOM carries, and clean strings. One test per rule; expected values from the standards they cite."""

from __future__ import annotations

from pathlib import Path

import pytest
from msgspec.structs import replace
from pydantic import ValidationError

from app.settings import Settings, host_timezone
from domain.events import CodedValue
from domain.fhir_mapping import StoredPatient, build_transaction_bundle
from domain.fhir_resources import MappingOptions, build_imaging_study, build_patient, merge_patient
from domain.fhir_values import (
    SNOMED,
    SNOMED_RT,
    acquisition_modalities,
    body_site,
    coding,
    concept,
    display_text,
    laterality,
    pn_display,
)
from domain.local_time import fhir_datetime
from tests.factories import make_ready

OPTIONS = MappingOptions()
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"


# --- 2. Local time stays local ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("da", "tm", "tz", "default", "expected"),
    [
        ("20240501", "171700", "", "Asia/Tokyo", "2024-05-01T17:17:00+09:00"),  # not 17:17 UTC
        ("20240501", "101500", "+0200", "UTC", "2024-05-01T10:15:00+02:00"),  # the offset the data carries wins
        ("20240501", "101500.123", "-0500", "Asia/Tokyo", "2024-05-01T10:15:00.123-05:00"),
        ("20240501", "1015", "", "UTC", "2024-05-01T10:15:00Z"),
        ("20240115", "08", "", "Europe/Berlin", "2024-01-15T08:00:00+01:00"),  # winter time
        ("20240715", "08", "", "Europe/Berlin", "2024-07-15T08:00:00+02:00"),  # summer time
        ("20240331", "023000", "", "Europe/Berlin", "2024-03-31T02:30:00+01:00"),  # DST gap: the offset before
        ("20241027", "023000", "", "Europe/Berlin", "2024-10-27T02:30:00+02:00"),  # DST overlap: the first one
        ("20240501", "101500", "+0575", "UTC", "2024-05-01"),  # minutes out of range: no time, not a wrong one
        ("20240501", "101500", "+1500", "UTC", "2024-05-01"),  # beyond +14:00
        ("20240501", "101500", "-1300", "UTC", "2024-05-01"),  # beyond -12:00
        ("20240501", "101500", "+1400", "UTC", "2024-05-01T10:15:00+14:00"),
        ("20240501", "101500", "-1200", "UTC", "2024-05-01T10:15:00-12:00"),
        ("2004.01.19", "07:27:30", "", "UTC", "2004-01-19T07:27:30Z"),  # ACR-NEMA formats
        ("2004.01.19", "07:27", "+0100", "UTC", "2004-01-19T07:27:00+01:00"),
        ("20240501", "", "+0200", "UTC", "2024-05-01"),
        ("20240501", "99", "", "UTC", "2024-05-01"),
        ("20240230", "101500", "", "UTC", None),
        ("", "101500", "", "UTC", None),
    ],
)
def test_dicom_date_time_in_the_site_s_local_time(
    da: str, tm: str, tz: str, default: str, expected: str | None
) -> None:
    assert fhir_datetime(da, tm, tz, default) == expected


def test_the_default_zone_is_the_host_s_and_an_unknown_zone_stops_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STUDYSTREAM_FHIR_DEFAULT_TIMEZONE", raising=False)
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    assert host_timezone() == "Asia/Tokyo"
    assert Settings(_env_file=None).fhir_default_timezone == "Asia/Tokyo"  # type: ignore[call-arg]
    monkeypatch.setenv("TZ", "Not/AZone")
    assert host_timezone() != "Not/AZone"  # skipped: /etc/timezone or /etc/localtime decide, else UTC
    with pytest.raises(ValidationError, match="unknown time zone"):
        Settings(_env_file=None, fhir_default_timezone="Europe/Atlantis")  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="out of range"):
        Settings(_env_file=None, fhir_default_timezone="+1600")  # type: ignore[call-arg]


def test_a_study_without_offset_starts_in_the_configured_zone() -> None:
    ready = make_ready(study_time="171700", timezone_offset="")
    study = build_imaging_study(ready, MappingOptions(default_timezone="Asia/Tokyo"), "Patient/1").as_json()
    assert study["started"] == "2024-05-01T17:17:00+09:00"


# --- 3. Codes say what they are --------------------------------------------------------------------


def test_srt_codes_become_their_snomed_ct_equivalents_or_keep_snomed_rt_s_own_system() -> None:
    assert coding(CodedValue("T-D4000", "SRT", "Abdomen")) == {
        "system": SNOMED,
        "code": "113345001",  # PS3.16's SRT→SCT equivalence
        "display": "Abdomen",
    }
    assert coding(CodedValue("X-NOT-A-CODE", "SRT", "?")) == {
        "system": SNOMED_RT,
        "code": "X-NOT-A-CODE",
        "display": "?",
    }
    assert coding(CodedValue("113691", "DCM", "IEC")) == {
        "system": "http://dicom.nema.org/resources/ontology/DCM",
        "code": "113691",
        "display": "IEC",
    }
    assert coding(CodedValue("24627-2", "LN", "Chest CT"))["system"] == "http://loinc.org"  # type: ignore[index]
    assert coding(CodedValue("RID1301", "RADLEX", "lung"))["system"] == "http://radlex.org"  # type: ignore[index]


def test_a_local_scheme_needs_the_site_s_table_else_only_its_meaning_is_kept() -> None:
    local = CodedValue("CT-ABD", "99MYHOSP", "CT abdomen")
    assert concept(local) == {"text": "CT abdomen"}  # a code without a system would mean nothing
    mapped = concept(local, {"99MYHOSP": "https://codes.myhosp.example/procedures"})
    assert mapped == {
        "coding": [{"system": "https://codes.myhosp.example/procedures", "code": "CT-ABD", "display": "CT abdomen"}],
        "text": "CT abdomen",
    }


def test_imaging_study_modality_is_cid_29_only() -> None:
    assert acquisition_modalities(["CT", "SR", "KO", "PR", "RTPLAN", "OT", "mr", "CT", "SEG", "DX"]) == [
        "CT",
        "MR",
        "DX",
    ]


# --- 4. Identifiers and issuers --------------------------------------------------------------------


def test_accession_issuer_universal_id_wins_and_placer_order_goes_to_based_on() -> None:
    ready = make_ready()
    ready = replace(
        ready,
        study=replace(
            ready.study,
            accession_issuer="LOCALNAME",
            accession_issuer_universal="2.16.840.1.113883.19.5",
            accession_issuer_universal_type="ISO",
            placer_order_number="ORD-77",
            placer_order_issuer_universal="6f9619ff-8b86-d011-b42d-00c04fc964ff",
            placer_order_issuer_universal_type="UUID",
            study_id="S42",
        ),
    )
    study = build_imaging_study(ready, OPTIONS, "Patient/1").as_json()
    accession = {
        "type": {"coding": [{"system": V2_0203, "code": "ACSN"}]},
        "system": "urn:oid:2.16.840.1.113883.19.5",
        "value": "ACC1",
    }
    assert study["identifier"][1] == {"use": "usual", **accession}
    assert study["identifier"][2] == {"use": "secondary", "type": {"text": "DICOM Study ID"}, "value": "S42"}
    assert study["basedOn"] == [
        {"type": "ServiceRequest", "identifier": accession},
        {
            "type": "ServiceRequest",
            "identifier": {
                "type": {"coding": [{"system": V2_0203, "code": "PLAC"}]},
                "value": "ORD-77",
                "system": "urn:uuid:6f9619ff-8b86-d011-b42d-00c04fc964ff",
            },
        },
    ]


def test_patient_issuer_qualifiers_and_the_calling_ae_map() -> None:
    ready = make_ready()
    qualified = replace(
        ready, patient=replace(ready.patient, issuer_universal="1.2.3.4.5", issuer_universal_type="ISO")
    )
    assert build_patient(qualified, OPTIONS).as_json()["identifier"][0]["system"] == "urn:oid:1.2.3.4.5"
    by_ae = replace(ready, patient=replace(ready.patient, issuer="", calling_ae="CT1"))
    site = MappingOptions(patient_system_by_ae={"CT1": "urn:oid:7.7"})
    assert build_patient(by_ae, site).as_json()["identifier"][0]["system"] == "urn:oid:7.7"
    assert build_patient(by_ae, OPTIONS).as_json()["identifier"][0]["system"] == OPTIONS.default_patient_system


# --- 5. Fields the data carries ----------------------------------------------------------------------


def test_interpreter_reason_department_and_institution_are_mapped() -> None:
    ready = make_ready()
    ready = replace(
        ready,
        study=replace(
            ready.study,
            reading_physicians="Reader^Rita\\----",
            reason_codes=(CodedValue("R07.4", "I10", "Chest pain"),),
            reason_text="Chest pain, rule out PE",
            department="Radiology",
        ),
        series=(replace(ready.series[0], institution="General Hospital"),),
    )
    study = build_imaging_study(ready, OPTIONS, "Patient/1").as_json()
    assert study["interpreter"] == [{"display": "Rita Reader", "type": "Practitioner"}]  # the placeholder dropped
    assert study["reasonCode"] == [
        {
            "coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "R07.4", "display": "Chest pain"}],
            "text": "Chest pain",
        },
        {"text": "Chest pain, rule out PE"},
    ]
    assert study["location"] == {"display": "Radiology", "type": "Location"}
    assert study["series"][0]["performer"][-1] == {"actor": {"display": "General Hospital", "type": "Organization"}}


@pytest.mark.parametrize(
    ("term", "code"),
    [
        ("LUNG", "39607008"),
        ("ABDOMENPELVIS", "818982008"),
        ("WHOLEBODY", "38266002"),
        ("LEG", "30021000"),
        ("LIVER", "10200004"),
        ("CHEST", "43799004"),
        ("abdomen pelvis", "818982008"),  # spacing and case as senders write it
    ],
)
def test_body_part_examined_through_annex_l(term: str, code: str) -> None:
    site = body_site((), term)
    assert site is not None and (site["system"], site["code"]) == (SNOMED, code)


def test_anatomic_region_sequence_comes_before_body_part_examined() -> None:
    region = CodedValue("T-28000", "SRT", "Lung")  # SRT: mapped to its SNOMED CT id
    site = body_site((region,), "ABDOMEN")
    assert site == {"system": SNOMED, "code": "39607008", "display": "Lung"}
    assert body_site((CodedValue("x", "99LOCAL", "x"),), "KNEE") == {
        "system": SNOMED,
        "code": "72696002",
        "display": "Knee",
    }  # a region of an unknown scheme does not hide the body part
    assert body_site((), "NOT_A_TERM") is None


@pytest.mark.parametrize(
    ("series_side", "image_sides", "expected"),
    [
        ("R", (), "24028007"),  # Laterality (0020,0060) labels the series
        ("", ("L",), "7771000"),  # every image says left
        ("", ("L", "R"), None),  # left and right images: no side for the series
        ("", ("L", ""), None),  # some images without: they do not agree
        ("", ("U",), None),  # unpaired
        ("L", ("R",), "7771000"),  # the series attribute wins
    ],
)
def test_laterality_of_a_series(series_side: str, image_sides: tuple[str, ...], expected: str | None) -> None:
    side = laterality(series_side, image_sides)
    assert (side["code"] if side else None) == expected


def test_placeholders_never_become_performers() -> None:
    ready = make_ready()
    series = replace(ready.series[0], performing_physician="----", operators_name="^^\\=", manufacturer="-", model="")
    study = build_imaging_study(replace(ready, series=(series,)), OPTIONS, "Patient/1").as_json()
    assert "performer" not in study["series"][0]


# --- 6. Strings clean ----------------------------------------------------------------------------------


def test_control_characters_and_escape_sequences_never_reach_a_string() -> None:
    assert display_text("CT\x1b$B CHEST\x00\x07\r\n") == "CT CHEST"
    ready = make_ready(name="Yamada^Tarou\x1b(B=\x1b$B;3ED")
    names = build_patient(ready, OPTIONS).as_json()["name"]
    assert all("\x1b" not in str(n) for n in names)


def test_display_order_of_names() -> None:
    assert pn_display("Smith^John^^Dr") == "Dr John Smith"
    assert pn_display("=山田^太郎") == "山田 太郎"  # ideographic names family first
    assert pn_display("^^^^") == "" and pn_display("----") == ""


# --- 1b. Patient updates touch only what StudyStream owns ------------------------------------------------


def test_a_stored_patient_is_updated_in_the_owned_elements_only_and_only_when_they_change(tmp_path: Path) -> None:
    ready = make_ready(name="Smith^John")
    written = build_patient(ready, OPTIONS).as_json()
    stored = {
        "resourceType": "Patient",
        "id": "p1",
        "meta": {"versionId": "3"},
        "identifier": [written["identifier"][0], {"system": "urn:mpi", "value": "M-1"}],
        "name": [{"family": "Smyth", "given": ["Jon"]}],
        "gender": "female",
        "birthDate": "1970-01-02",
        "telecom": [{"system": "phone", "value": "555"}],
    }
    merged = merge_patient(stored, written)
    assert merged is not None
    assert merged["name"] == written["name"] and merged["telecom"] == stored["telecom"]
    assert merged["identifier"] == stored["identifier"] and "meta" not in merged
    unchanged = {**stored, "name": written["name"]}
    assert merge_patient(unchanged, written) is None  # nothing to write
    bundle = build_transaction_bundle(ready, OPTIONS, stored_patient=StoredPatient("p1", "3", stored))
    patient, study = bundle["entry"]
    assert patient["request"] == {"method": "PUT", "url": "Patient/p1", "ifMatch": 'W/"3"'}
    assert study["resource"]["subject"]["reference"] == "Patient/p1"
    same = build_transaction_bundle(ready, OPTIONS, stored_patient=StoredPatient("p1", "4", unchanged))
    assert [e["resource"]["resourceType"] for e in same["entry"]] == ["ImagingStudy"]
    create_only = MappingOptions(update_patient=False)
    assert (
        len(build_transaction_bundle(ready, create_only, stored_patient=StoredPatient("p1", "3", stored))["entry"]) == 1
    )


def test_no_patient_sex_in_dicom_leaves_the_stored_gender_alone() -> None:
    ready = replace(make_ready(), patient=replace(make_ready().patient, sex=""))
    written = build_patient(ready, OPTIONS).as_json()
    merged = merge_patient({"resourceType": "Patient", "id": "p", "gender": "female"}, written)
    assert merged is not None and merged["gender"] == "female"
