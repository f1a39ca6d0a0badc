"""The DICOM reference tables in domain.terminology_tables, checked against pydicom's copy of PS3.16."""

from __future__ import annotations

import re
from functools import cache

import pytest
from pydicom.sr._cid_dict import cid_concepts
from pydicom.sr._concepts_dict import concepts

from domain.terminology_tables import BODY_PART_EXAMINED, BODY_PART_MEANING_NOTES, CODING_SCHEMES

CS_DEFINED_TERM = re.compile(r"^[A-Z0-9]+$")  # Body Part Examined is CS: upper case, digits, at most 16
SCT_CONCEPT_ID = re.compile(r"^[1-9][0-9]{5,17}$")


@cache
def sct_meanings() -> dict[str, frozenset[str]]:
    """Every SNOMED CT code pydicom knows → the (lower-cased) meanings it gives the code."""
    found: dict[str, set[str]] = {}
    for by_code in concepts["SCT"].values():
        for code, (meaning, _cids) in by_code.items():
            found.setdefault(code, set()).add(meaning.casefold())
    return {code: frozenset(meanings) for code, meanings in found.items()}


def cid_codes(cid: int) -> set[str]:
    """The SNOMED CT codes of one DICOM context group, as pydicom has it."""
    return {code for name in cid_concepts[cid].get("SCT", []) for code in concepts["SCT"][name]}


def test_body_part_table_is_the_whole_annex_not_a_sample() -> None:
    assert len(BODY_PART_EXAMINED) >= 300


@pytest.mark.parametrize("term", sorted(BODY_PART_EXAMINED))
def test_terms_are_cs_defined_terms(term: str) -> None:
    assert CS_DEFINED_TERM.match(term), term
    assert len(term) <= 16, term


@pytest.mark.parametrize("term", sorted(BODY_PART_EXAMINED))
def test_every_code_is_a_snomed_ct_concept_pydicom_knows(term: str) -> None:
    code, meaning = BODY_PART_EXAMINED[term]
    assert SCT_CONCEPT_ID.match(code), (term, code)
    assert meaning and meaning == meaning.strip(), term
    assert code in sct_meanings(), f"{term}: {code} is not an SCT concept in pydicom"


@pytest.mark.parametrize("term", sorted(BODY_PART_EXAMINED))
def test_meaning_matches_pydicom_or_is_documented(term: str) -> None:
    code, meaning = BODY_PART_EXAMINED[term]
    if term in BODY_PART_MEANING_NOTES:
        return
    assert meaning.casefold() in sct_meanings()[code], f"{term}: {meaning!r} vs {sorted(sct_meanings()[code])}"


@pytest.mark.parametrize("term", sorted(BODY_PART_MEANING_NOTES))
def test_meaning_notes_explain_real_differences_only(term: str) -> None:
    assert term in BODY_PART_EXAMINED, f"note for a term the table does not have: {term}"
    code, meaning = BODY_PART_EXAMINED[term]
    assert meaning.casefold() not in sct_meanings()[code], f"{term}: meaning matches pydicom, drop the note"
    assert BODY_PART_MEANING_NOTES[term].strip()


@pytest.mark.parametrize(
    ("term", "expected"),
    [
        ("ABDOMEN", ("818981001", "Abdomen")),
        ("ABDOMENPELVIS", ("818982008", "Abdomen and Pelvis")),
        ("CHEST", ("43799004", "Chest")),
        ("CHESTABDPELVIS", ("416775004", "Chest, Abdomen and Pelvis")),
        ("CSPINE", ("122494005", "Cervical spine")),
        ("LEG", ("30021000", "Lower leg")),
        ("LIVER", ("10200004", "Liver")),
        ("LUNG", ("39607008", "Lung")),
        ("PELVIS", ("816092008", "Pelvis")),
        ("THORAX", ("816094009", "Chest")),
        ("TMJ", ("53620006", "Temporomandibular joint")),
        ("WHOLEBODY", ("38266002", "Entire body")),
    ],
)
def test_spot_checks(term: str, expected: tuple[str, str]) -> None:
    assert BODY_PART_EXAMINED[term] == expected


def test_no_retired_snomed_rt_era_codes_remain() -> None:
    """CP-1962 moved ABDOMEN, ABDOMENPELVIS, PELVIS, CHEST off their pre-2019 SNOMED concepts."""
    retired = {"113345001", "416949008", "12921003", "51185008"}
    assert not retired & {code for code, _ in BODY_PART_EXAMINED.values()}


def test_thorax_is_not_the_chest_concept() -> None:
    assert BODY_PART_EXAMINED["THORAX"][0] != BODY_PART_EXAMINED["CHEST"][0]
    assert "thorax" in sct_meanings()[BODY_PART_EXAMINED["THORAX"][0]]


def test_common_anatomic_regions_of_the_table_are_in_cid_4031_or_cid_4() -> None:
    """Annex L lists CID 4 "Anatomic Region" concepts; the big regions are also CID 4031 ones."""
    regions = cid_codes(4031) | cid_codes(4)
    for term in ("ABDOMEN", "ABDOMENPELVIS", "PELVIS", "HEAD", "NECK", "LSPINE", "KNEE", "BREAST", "WHOLEBODY"):
        assert BODY_PART_EXAMINED[term][0] in regions, term


@pytest.mark.parametrize("designator", sorted(CODING_SCHEMES))
def test_coding_scheme_uris_are_absolute(designator: str) -> None:
    uri = CODING_SCHEMES[designator]
    assert designator and designator == designator.strip()
    assert uri.startswith(("urn:", "http://", "https://")), (designator, uri)
    assert uri == uri.strip() and " " not in uri
    assert not uri.endswith("/"), (designator, uri)


@pytest.mark.parametrize(
    ("designator", "uri"),
    [
        ("DCM", "http://dicom.nema.org/resources/ontology/DCM"),
        ("SCT", "http://snomed.info/sct"),
        ("SRT", "http://snomed.info/srt"),
        ("LN", "http://loinc.org"),
        ("UCUM", "http://unitsofmeasure.org"),
        ("RADLEX", "http://radlex.org"),
        ("I10", "http://hl7.org/fhir/sid/icd-10"),
        ("I9C", "http://hl7.org/fhir/sid/icd-9-cm"),
        ("C4", "http://www.ama-assn.org/go/cpt"),
        ("MDC", "urn:iso:std:iso:11073:10101"),
        ("RFC5646", "urn:ietf:bcp:47"),
    ],
)
def test_coding_scheme_spot_checks(designator: str, uri: str) -> None:
    assert CODING_SCHEMES[designator] == uri


def test_snomed_rt_is_not_snomed_ct() -> None:
    assert CODING_SCHEMES["SRT"] != CODING_SCHEMES["SCT"]


def test_each_uri_names_one_scheme() -> None:
    assert len(set(CODING_SCHEMES.values())) == len(CODING_SCHEMES)
