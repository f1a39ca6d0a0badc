"""StudyReady → FHIR R4 resources and the transaction Bundle, against hand-written expected JSON."""

from __future__ import annotations

import orjson
import pytest
from msgspec.structs import replace

from domain.fhir_mapping import (
    MAPPING_VERSION,
    MAPPING_VERSION_TAG_SYSTEM,
    MappingOptions,
    StoredStudy,
    build_imaging_study,
    build_patient,
    build_transaction_bundle,
    bundle_file_name,
    escape_token,
    full_url,
    is_newer,
    meta_delete_parameters,
    outdated_tags,
    patient_identifier,
    stored_mapping_version,
    stored_revision,
    studystream_tags,
    token_query,
)
from domain.fhir_values import EN_REPRESENTATION, human_names
from domain.patient import issuer_system
from domain.study import PatientInfo
from tests.uploader.factories import make_ready

DCM = "http://dicom.nema.org/resources/ontology/DCM"
OPTIONS = MappingOptions(dicomweb_base_url="https://pacs.example.org/dicom-web")
STUDY_UID = "1.2.826.0.1.3680043.10.1404.1"
PATIENT_URL = full_url("Patient", "urn:studystream:issuer:HOSP|PID-1")
ENDPOINT_URL = full_url("Endpoint", "https://pacs.example.org/dicom-web")

EXPECTED_PATIENT = {
    "resourceType": "Patient",
    "identifier": [{"use": "usual", "system": "urn:studystream:issuer:HOSP", "value": "PID-1"}],
    "name": [{"use": "official", "text": "Jane Doe", "family": "Doe", "given": ["Jane"]}],
    "birthDate": "1970-01-02",
    "gender": "female",
}

EXPECTED_STUDY = {
    "resourceType": "ImagingStudy",
    "meta": {
        "tag": [
            {
                "system": "urn:studystream:study-revision",
                "code": "1.3",
                "display": "StudyStream revision 3 (state generation 1)",
            },
            {"system": "urn:studystream:mapping-version", "code": "2", "display": "StudyStream FHIR mapping version 2"},
        ]
    },
    "identifier": [
        {"use": "official", "system": "urn:dicom:uid", "value": f"urn:oid:{STUDY_UID}"},
        {
            "use": "usual",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
            "system": "urn:oid:1.2.3.4",
            "value": "ACC1",
        },
    ],
    "status": "available",
    "modality": [{"system": DCM, "code": "CT"}],
    "subject": {"reference": PATIENT_URL, "type": "Patient"},
    "started": "2024-05-01T10:15:00+02:00",
    "basedOn": [
        {
            "type": "ServiceRequest",
            "identifier": {
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
                "system": "urn:oid:1.2.3.4",
                "value": "ACC1",
            },
        }
    ],
    "referrer": {"display": "Ray Referrer", "type": "Practitioner"},
    "endpoint": [{"reference": ENDPOINT_URL, "type": "Endpoint"}],
    "numberOfSeries": 1,
    "numberOfInstances": 2,
    "procedureCode": [
        {
            "coding": [
                {"system": "http://www.ama-assn.org/go/cpt", "code": "71250", "display": "CT chest w/o contrast"}
            ],
            "text": "CT chest w/o contrast",
        }
    ],
    "description": "CT CHEST",
    "series": [
        {
            "uid": f"{STUDY_UID}.1",
            "number": 1,
            "modality": {"system": DCM, "code": "CT"},
            "description": "Series 1",
            "numberOfInstances": 2,
            "bodySite": {"system": "http://snomed.info/sct", "code": "72696002", "display": "Knee"},
            "laterality": {"system": "http://snomed.info/sct", "code": "7771000", "display": "Left"},
            "started": "2024-05-01T10:16:00+02:00",
            "performer": [
                {
                    "function": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                "code": "PRF",
                                "display": "performer",
                            }
                        ]
                    },
                    "actor": {"display": "Greg House", "type": "Practitioner"},
                },
                {"actor": {"display": "Olga Op", "type": "Practitioner"}},
                {"actor": {"display": "ACME Scanner 1", "type": "Device"}},
            ],
            "instance": [
                {
                    "uid": f"{STUDY_UID}.1.{n}",
                    "sopClass": {"system": "urn:ietf:rfc:3986", "code": "urn:oid:1.2.840.10008.5.1.4.1.1.2"},
                    "number": n,
                    "title": "ORIGINAL\\PRIMARY\\AXIAL",
                }
                for n in (1, 2)
            ],
        }
    ],
}


def small_study(revision: int = 3):
    return make_ready(STUDY_UID, revision=revision, series=(("CT", "KNEE", 2),))


def test_bundle_of_a_small_study_matches_the_expected_json() -> None:
    bundle = build_transaction_bundle(small_study(), OPTIONS)

    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
    patient, endpoint, study = bundle["entry"]
    assert patient == {
        "fullUrl": PATIENT_URL,
        "resource": EXPECTED_PATIENT,
        "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:studystream:issuer:HOSP|PID-1"},
    }
    assert endpoint["fullUrl"] == ENDPOINT_URL
    assert endpoint["request"] == {
        "method": "POST",
        "url": "Endpoint",
        "ifNoneExist": "identifier=urn:ietf:rfc:3986|https://pacs.example.org/dicom-web",
    }
    assert endpoint["resource"]["address"] == "https://pacs.example.org/dicom-web"
    assert endpoint["resource"]["connectionType"]["code"] == "dicom-wado-rs"
    assert study["request"] == {"method": "PUT", "url": f"ImagingStudy?identifier=urn:dicom:uid|urn:oid:{STUDY_UID}"}
    assert study["resource"] == EXPECTED_STUDY


def test_building_twice_gives_identical_bytes() -> None:
    assert orjson.dumps(build_transaction_bundle(small_study(), OPTIONS)) == orjson.dumps(
        build_transaction_bundle(small_study(), OPTIONS)
    )


def test_without_dicomweb_base_url_there_is_no_endpoint() -> None:
    bundle = build_transaction_bundle(small_study(), MappingOptions())
    assert [e["resource"]["resourceType"] for e in bundle["entry"]] == ["Patient", "ImagingStudy"]
    assert "endpoint" not in bundle["entry"][1]["resource"]


def test_known_stored_study_is_updated_by_id_with_if_match() -> None:
    bundle = build_transaction_bundle(small_study(), OPTIONS, StoredStudy(id="42", version="7", revision=(1, 2)))
    entry = bundle["entry"][-1]
    assert entry["request"] == {"method": "PUT", "url": "ImagingStudy/42", "ifMatch": 'W/"7"'}
    assert entry["resource"]["id"] == "42"


def test_modality_lists_acquisition_modalities_only_and_series_keep_every_value() -> None:
    ready = make_ready(
        series=(("MR", "HEAD", 1), ("CT", "", 1), ("SR", "", 1), ("MR", "", 1), ("", "", 1), ("KO", "", 1))
    )
    study = build_imaging_study(ready, OPTIONS, "urn:uuid:p").as_json()
    assert [m["code"] for m in study["modality"]] == ["MR", "CT"]  # CID 29: not SR, KO, nor the OT fallback
    assert [s["modality"]["code"] for s in study["series"]] == ["MR", "CT", "SR", "MR", "OT", "KO"]
    assert study["numberOfSeries"] == 6 and study["numberOfInstances"] == 6
    assert "bodySite" not in study["series"][1]  # no body part: no guess


def test_japanese_name_with_ideographic_and_phonetic_groups() -> None:
    ready = make_ready(name="Yamada^Tarou=山田^太郎=やまだ^たろう")
    names = build_patient(ready, OPTIONS).as_json()["name"]
    assert names == [
        {
            "use": "official",
            "text": "Tarou Yamada",
            "family": "Yamada",
            "given": ["Tarou"],
            "extension": [{"url": EN_REPRESENTATION, "valueCode": "ABC"}],
        },
        {
            "use": "official",
            "text": "山田 太郎",
            "family": "山田",
            "given": ["太郎"],
            "extension": [{"url": EN_REPRESENTATION, "valueCode": "IDE"}],
        },
        {
            "use": "official",
            "text": "やまだ たろう",
            "family": "やまだ",
            "given": ["たろう"],
            "extension": [{"url": EN_REPRESENTATION, "valueCode": "SYL"}],
        },
    ]


def test_korean_name_with_ideographic_and_phonetic_groups() -> None:
    names = human_names("Hong^Gildong=洪^吉洞=홍^길동")
    assert [(n["family"], n["given"], n["extension"][0]["valueCode"]) for n in names] == [
        ("Hong", ["Gildong"], "ABC"),
        ("洪", ["吉洞"], "IDE"),
        ("홍", ["길동"], "SYL"),
    ]


def test_name_groups_left_empty_are_skipped_but_keep_their_representation() -> None:
    names = human_names("=山田^太郎")  # ideographic only, alphabetic empty: still marked ideographic
    assert names == [
        {
            "use": "official",
            "text": "山田 太郎",
            "family": "山田",
            "given": ["太郎"],
            "extension": [{"url": EN_REPRESENTATION, "valueCode": "IDE"}],
        }
    ]
    names = human_names("Yamada^Tarou==やまだ^たろう")
    assert [n["extension"][0]["valueCode"] for n in names] == ["ABC", "SYL"]


def test_name_components_middle_prefix_suffix() -> None:
    (name,) = human_names("Smith^John^Paul^Dr.^Jr.")
    assert name == {
        "use": "official",
        "text": "Dr. John Paul Smith Jr.",
        "family": "Smith",
        "given": ["John", "Paul"],
        "prefix": ["Dr."],
        "suffix": ["Jr."],
    }


@pytest.mark.parametrize(
    ("sex", "gender"), [("M", "male"), ("F", "female"), ("O", "other"), ("", "unknown"), ("X", "unknown")]
)
def test_gender(sex: str, gender: str) -> None:
    ready = replace(make_ready(), patient=PatientInfo(id="P", sex=sex))
    assert build_patient(ready, OPTIONS).as_json()["gender"] == gender


def test_patient_identifier_systems() -> None:
    def system(issuer: str) -> str:
        ready = replace(make_ready(), patient=PatientInfo(id="P1", issuer=issuer))
        return patient_identifier(ready, MappingOptions(default_patient_system="urn:oid:9.9"))[0]

    assert system("") == "urn:oid:9.9"
    assert system("2.16.840.1.113883.3.1") == "urn:oid:2.16.840.1.113883.3.1"
    assert system("https://mpi.example.org/pid") == "https://mpi.example.org/pid"
    assert system("St Mary's") == "urn:studystream:issuer:St%20Mary%27s"
    assert issuer_system("HOSP", "d", "p:") != issuer_system("CLINIC", "d", "p:")


def test_patient_without_id_is_a_patient_of_the_study() -> None:
    ready = replace(make_ready(STUDY_UID), patient=PatientInfo(name="Doe^John"))
    bundle = build_transaction_bundle(ready, OPTIONS)
    assert bundle["entry"][0]["request"]["ifNoneExist"] == (
        f"identifier=urn:studystream:patient-of-study|urn:oid:{STUDY_UID}"
    )


@pytest.mark.parametrize(
    ("patient_id", "encoded"),
    [
        ("A|B&C D", "A%5C%7CB%26C%20D"),  # '|' escaped as '\|' before URL encoding
        ("12,34", "12%5C%2C34"),  # a comma is an OR to the server unless escaped
        ("$1", "%5C%241"),
        ("back\\slash", "back%5C%5Cslash"),
        ("p q", "p%20q"),
    ],
)
def test_identifier_values_are_escaped_then_url_encoded_in_conditions(patient_id: str, encoded: str) -> None:
    ready = replace(make_ready(), patient=PatientInfo(id=patient_id, issuer="HOSP"))
    condition = build_transaction_bundle(ready, OPTIONS)["entry"][0]["request"]["ifNoneExist"]
    assert condition == f"identifier=urn:studystream:issuer:HOSP|{encoded}"


def test_token_escaping_covers_every_special_character_of_fhir_search() -> None:
    assert escape_token("a\\b,c|d$e") == "a\\\\b\\,c\\|d\\$e"
    assert token_query("urn:x|y", "v") == "identifier=urn:x%5C%7Cy|v"  # systems are escaped too


def test_stored_revision_is_the_highest_tag_of_the_system() -> None:
    resource = {
        "meta": {
            "tag": [
                {"system": "urn:studystream:study-revision", "code": "1"},
                {"system": "urn:studystream:study-revision", "code": "3"},
                {"system": "other", "code": "9"},
            ]
        }
    }
    assert stored_revision(resource, OPTIONS) == (1, 3)
    assert stored_revision({}, OPTIONS) == (0, 0)
    generations = {
        "meta": {
            "tag": [
                {"system": "urn:studystream:study-revision", "code": "7"},  # written before generations: (1, 7)
                {"system": "urn:studystream:study-revision", "code": "2.1"},
                {"system": "urn:studystream:study-revision", "code": "x.1"},
            ]
        }
    }
    assert stored_revision(generations, OPTIONS) == (2, 1)


def test_a_revision_is_newer_than_a_lower_one_or_the_same_one_from_an_older_mapping() -> None:
    stored = StoredStudy("42", "3", revision=(1, 2), mapping_version=1)
    assert is_newer((1, 3), stored, mapping_version=1)
    assert is_newer((1, 2), stored, mapping_version=2)  # the same revision, a fixed mapping: write it again
    assert not is_newer((1, 2), stored, mapping_version=1)
    assert not is_newer((1, 1), stored, mapping_version=9)  # never a lower revision, whatever the mapping
    assert is_newer((2, 1), stored, mapping_version=1)  # a new state generation comes after every older revision
    assert is_newer((1, 1), None)
    untagged = {"meta": {"tag": [{"system": "urn:studystream:study-revision", "code": "2"}]}}
    assert stored_mapping_version(untagged) == 0
    tags = build_imaging_study(make_ready(), OPTIONS, "Patient/1").meta.tag
    assert [(t.system, t.code) for t in tags] == [
        ("urn:studystream:study-revision", "1.1"),
        (MAPPING_VERSION_TAG_SYSTEM, str(MAPPING_VERSION)),
    ]


def test_tags_carried_over_from_earlier_versions_are_named_for_removal() -> None:
    resource = {
        "meta": {
            "tag": [
                {"system": "urn:studystream:study-revision", "code": "1.1"},
                {"system": "urn:studystream:study-revision", "code": "1.2"},
                {"system": MAPPING_VERSION_TAG_SYSTEM, "code": str(MAPPING_VERSION)},
                {"system": "someone-else", "code": "keep"},
            ]
        }
    }
    stored = StoredStudy("42", "3", stored_revision(resource, OPTIONS), 1, studystream_tags(resource, OPTIONS))
    written = build_imaging_study(make_ready(revision=3), OPTIONS, "Patient/1").as_json()
    assert outdated_tags(stored, written, OPTIONS) == [
        {"system": "urn:studystream:study-revision", "code": "1.1"},
        {"system": "urn:studystream:study-revision", "code": "1.2"},
    ]
    assert meta_delete_parameters([{"system": "s", "code": "c"}])["parameter"][0]["valueMeta"]["tag"][0]["code"] == "c"


def test_bundle_file_name() -> None:
    assert bundle_file_name(STUDY_UID, (1, 2)) == f"{STUDY_UID}-r2.json"
    assert bundle_file_name(STUDY_UID, (3, 2)) == f"{STUDY_UID}-g3-r2.json"
