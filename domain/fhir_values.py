"""DICOM values → FHIR R4 datatypes: person names, codes, body sites and lateralities.

Pure functions, no I/O. Each returns ``None`` (or an empty list) when the DICOM value is empty or
malformed, so the mapping leaves the FHIR element out instead of writing an invalid one.

Dates and times are :mod:`domain.local_time`'s.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydicom.sr._cid_dict import cid_concepts
from pydicom.sr._concepts_dict import concepts
from pydicom.sr._snomed_dict import mapping as snomed_mapping

from domain.dicom_text import clean_text, is_placeholder, split_person_name
from domain.events import CodedValue
from domain.terminology_tables import BODY_PART_EXAMINED, CODING_SCHEMES

SNOMED = "http://snomed.info/sct"
SNOMED_RT = "http://snomed.info/srt"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
EN_REPRESENTATION = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation"

_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")

# Laterality (0020,0060) and ImageLaterality (0020,0062) → SNOMED CT (the R4 binding, CID 244). U
# (unpaired) says there is no side: no laterality.
LATERALITY: dict[str, tuple[str, str]] = {
    "R": ("24028007", "Right"),
    "L": ("7771000", "Left"),
    "B": ("51440002", "Right and left"),
}

GENDERS = {"M": "male", "F": "female", "O": "other"}

# PN component groups in DICOM order and their ISO 21090 EntityNameUse representation codes.
PN_REPRESENTATIONS = ("ABC", "IDE", "SYL")


def _acquisition_modalities() -> frozenset[str]:
    """DICOM CID 29 "Acquisition Modality" (from pydicom's copy of PS3.16): what ImagingStudy.modality lists."""
    codes: set[str] = set()
    for name in cid_concepts[29]["DCM"]:
        codes.update(concepts["DCM"][name])
    return frozenset(codes)


ACQUISITION_MODALITIES = _acquisition_modalities()


# --- Person names --------------------------------------------------------------------------------


def _display_order(components: list[str], group: int) -> str:
    """Western order for the alphabetic group (``Dr John Smith``); family first for ideographic and phonetic."""
    family, given, middle, prefix, suffix = components
    if group == 0:
        parts = (prefix, given, middle, family, suffix)
    else:
        parts = (prefix, family, given, middle, suffix)
    return " ".join(p for p in parts if p)


def pn_display(pn: str) -> str:
    """A readable display of a DICOM PN: its first non-empty component group; ``""`` for a placeholder."""
    for index, components in enumerate(split_person_name(pn)):
        if is_placeholder("^".join(components)):
            continue
        text = _display_order(components, index)
        if text:
            return text
    return ""


def pn_values(value: str) -> list[str]:
    """The values of a possibly multi-valued (backslash-separated) PN, placeholders dropped."""
    return [v for v in value.split("\\") if pn_display(v)]


def human_names(pn: str, use: str = "official") -> list[dict[str, Any]]:
    """A DICOM PN → FHIR HumanName JSON, one per non-empty component group.

    Components are family^given^middle^prefix^suffix; given and middle both become ``given``; ``text``
    is the display order of :func:`pn_display`. A name with any group besides the alphabetic one
    (Japanese, Korean, Chinese names) marks each HumanName with the ``iso21090-EN-representation``
    extension: ABC (alphabetic), IDE (ideographic), SYL (phonetic; R4's NameRepresentationUse has no SYB).
    """
    groups = split_person_name(pn)
    present = [(i, g) for i, g in enumerate(groups) if not is_placeholder("^".join(g))]
    only_alphabetic = [i for i, _ in present] == [0]
    names: list[dict[str, Any]] = []
    for index, components in present:
        family, given, middle, prefix, suffix = components
        name: dict[str, Any] = {"use": use}
        text = _display_order(components, index)
        if text:
            name["text"] = text
        if family:
            name["family"] = family
        given_names = [p for p in (given, *middle.split()) if p]
        if given_names:
            name["given"] = given_names
        if prefix:
            name["prefix"] = [prefix]
        if suffix:
            name["suffix"] = [suffix]
        if not only_alphabetic:
            name["extension"] = [{"url": EN_REPRESENTATION, "valueCode": PN_REPRESENTATIONS[index]}]
        names.append(name)
    return names


def fhir_gender(sex: str) -> str:
    """PatientSex → AdministrativeGender: M, F, O as such; anything else (empty too) is ``unknown``."""
    return GENDERS.get(sex.strip().upper(), "unknown")


def display_text(value: str) -> str | None:
    """A free-text value for a FHIR string: cleaned, ``None`` when nothing (or only a placeholder) is left."""
    text = clean_text(value)
    return None if is_placeholder(text) else text


# --- Identifiers and codes -----------------------------------------------------------------------


def is_oid(value: str) -> bool:
    return bool(_OID.match(value))


def oid_urn(uid: str) -> str:
    return f"urn:oid:{uid}"


def coding_system(scheme: str, local_systems: Mapping[str, str] | None = None) -> str | None:
    """A Coding Scheme Designator → FHIR system URI: a URI as such, the site's own table
    (``fhir_coding_systems``, for ``99…`` local schemes), else :data:`CODING_SCHEMES`; ``None`` if unknown."""
    scheme = scheme.strip()
    if scheme.startswith(("urn:", "http://", "https://")):
        return scheme
    if local_systems and scheme in local_systems:
        return local_systems[scheme]
    return CODING_SCHEMES.get(scheme) or CODING_SCHEMES.get(scheme.upper())


def coding(code: CodedValue, local_systems: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """One DICOM code → a FHIR Coding; ``None`` when its scheme has no known system (see :func:`concept`).

    SRT (SNOMED RT) codes are not SNOMED CT concept ids: an SRT code with an SCT equivalent in DICOM's
    PS3.16 mapping (pydicom's copy) becomes that SCT code; one without keeps SNOMED RT's own system.
    """
    value = clean_text(code.code)
    if not value:
        return None
    scheme = code.scheme.strip().upper()
    meaning = clean_text(code.meaning)
    if scheme == "SRT":
        sct = snomed_mapping["SRT"].get(value)
        system, value = (SNOMED, sct) if sct else (SNOMED_RT, value)
    else:
        found = coding_system(code.scheme, local_systems)
        if found is None:
            return None
        system = found
    result = {"system": system, "code": value}
    if meaning:
        result["display"] = meaning
    return result


def concept(code: CodedValue, local_systems: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """One DICOM code → a FHIR CodeableConcept: its Coding when the scheme is known, and the meaning as text.

    A code of an unknown scheme keeps only its meaning: a code without a system would say nothing
    a receiver could rely on.
    """
    found = coding(code, local_systems)
    meaning = clean_text(code.meaning)
    result: dict[str, Any] = {}
    if found is not None:
        result["coding"] = [found]
    if meaning:
        result["text"] = meaning
    return result or None


def acquisition_modalities(modalities: Iterable[str]) -> list[str]:
    """The modalities that belong in ImagingStudy.modality: DICOM CID 29 only (not SR, KO, PR, OT ...)."""
    return [m for m in dict.fromkeys(m.strip().upper() for m in modalities) if m in ACQUISITION_MODALITIES]


def body_site(
    regions: Iterable[CodedValue], body_part: str, local_systems: Mapping[str, str] | None = None
) -> dict[str, str] | None:
    """A series' body site: its AnatomicRegionSequence code first, else BodyPartExamined through PS3.16
    Annex L (:data:`BODY_PART_EXAMINED`); unknown terms → ``None`` rather than a guess."""
    for region in regions:
        found = coding(region, local_systems)
        if found is not None:
            return found
    term = re.sub(r"[\s_]+", "", clean_text(body_part).upper())
    known = BODY_PART_EXAMINED.get(term)
    return {"system": SNOMED, "code": known[0], "display": known[1]} if known else None


def laterality(series_laterality: str, image_lateralities: Iterable[str] = ()) -> dict[str, str] | None:
    """A series' laterality: Laterality (0020,0060), else ImageLaterality when every image of the series
    carries the same one (a series with left and right images, or some without, has none)."""
    side = series_laterality.strip().upper()
    if side not in LATERALITY:
        sides = {s.strip().upper() for s in image_lateralities}
        side = sides.pop() if len(sides) == 1 else ""
    known = LATERALITY.get(side)
    return {"system": SNOMED, "code": known[0], "display": known[1]} if known else None
