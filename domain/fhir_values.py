"""DICOM values → FHIR R4 datatypes: dates and times, person names, issuers as URIs, and code tables.

Pure functions, no I/O. Each returns ``None`` (or an empty list) when the DICOM value is empty or
malformed, so the mapping leaves the FHIR element out instead of writing an invalid one.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

SNOMED = "http://snomed.info/sct"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
EN_REPRESENTATION = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation"

_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")
_DA = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_TM = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?$")
_TZ = re.compile(r"^([+-])(\d{2})(\d{2})$")

# BodyPartExamined (0018,0015) defined terms → SNOMED CT, per DICOM PS3.16 Annex L (CID 4031, 2020+ codes).
# Terms not listed map to no bodySite rather than a guess.
BODY_PARTS: dict[str, tuple[str, str]] = {
    "ABDOMEN": ("818981001", "Abdomen"),
    "ANKLE": ("70258002", "Ankle joint"),
    "BRAIN": ("12738006", "Brain"),
    "BREAST": ("76752008", "Breast"),
    "CHEST": ("43799004", "Chest"),
    "THORAX": ("816094009", "Thorax"),
    "CHESTABDOMEN": ("416550000", "Chest and abdomen"),
    "CSPINE": ("122494005", "Cervical spine"),
    "ELBOW": ("127949000", "Elbow region"),
    "EXTREMITY": ("66019005", "Limb"),
    "FOOT": ("56459004", "Foot"),
    "HAND": ("85562004", "Hand"),
    "HEAD": ("69536005", "Head"),
    "HEADNECK": ("774007", "Head and neck"),
    "HEART": ("80891009", "Heart"),
    "HIP": ("29836001", "Hip"),
    "KNEE": ("72696002", "Knee"),
    "LSPINE": ("122496007", "Lumbar spine"),
    "NECK": ("45048000", "Neck"),
    "PELVIS": ("816092008", "Pelvis"),
    "SHOULDER": ("16982005", "Shoulder"),
    "SKULL": ("89546000", "Skull"),
    "SPINE": ("421060004", "Spine"),
    "TSPINE": ("122495006", "Thoracic spine"),
    "WRIST": ("74670003", "Wrist joint"),
}

# Laterality (0020,0060) / ImageLaterality (0020,0062) → SNOMED CT (FHIR R4 ImagingStudy laterality binding).
LATERALITY: dict[str, tuple[str, str]] = {
    "R": ("24028007", "Right"),
    "L": ("7771000", "Left"),
    "B": ("51440002", "Right and left"),
}

# Coding Scheme Designators (PS3.16 Section 8) → FHIR code system URIs.
CODING_SCHEMES: dict[str, str] = {
    "DCM": DCM,
    "SCT": SNOMED,
    "SRT": SNOMED,
    "LN": "http://loinc.org",
    "C4": "http://www.ama-assn.org/go/cpt",
    "CPT": "http://www.ama-assn.org/go/cpt",
    "RADLEX": "http://radlex.org",
    "I10": "http://hl7.org/fhir/sid/icd-10",
    "UCUM": "http://unitsofmeasure.org",
}

GENDERS = {"M": "male", "F": "female", "O": "other"}

# PN component groups in DICOM order and their ISO 21090 EntityNameUse representation codes.
PN_REPRESENTATIONS = ("ABC", "IDE", "SYL")


# --- Dates and times -----------------------------------------------------------------------------


def fhir_date(da: str) -> str | None:
    """DICOM DA ``YYYYMMDD`` → FHIR date ``YYYY-MM-DD``; ``None`` if empty or not a real date."""
    match = _DA.match(da.strip())
    if not match:
        return None
    try:
        return date(*(int(g) for g in match.groups())).isoformat()
    except ValueError:
        return None


def parse_timezone_offset(value: str) -> timezone | None:
    """TimezoneOffsetFromUTC ``+HHMM``/``-HHMM`` → a fixed offset; ``None`` when empty or malformed."""
    match = _TZ.match(value.strip())
    if not match:
        return None
    sign, hours, minutes = match.groups()
    delta = timedelta(hours=int(hours), minutes=int(minutes))
    if delta > timedelta(hours=14):
        return None
    return timezone(-delta if sign == "-" else delta)


def fhir_datetime(da: str, tm: str, tz_offset: str, default_timezone: str) -> str | None:
    """DICOM DA + TM (+ TimezoneOffsetFromUTC) → FHIR dateTime.

    FHIR requires an offset whenever a time is given. DICOM times are local times; without
    TimezoneOffsetFromUTC they are read in ``default_timezone`` (an IANA name such as
    ``Europe/Berlin``, or ``UTC``), so summer and winter times get their right offsets.
    Without a time (or with a malformed one) the result is the date alone, which FHIR allows.
    """
    day = fhir_date(da)
    if day is None:
        return None
    time_match = _TM.match(tm.strip())
    if not time_match:
        return day
    hh, mm, ss, frac = time_match.groups()
    try:
        local = datetime.fromisoformat(day).replace(
            hour=int(hh), minute=int(mm or 0), second=int(ss or 0), microsecond=int((frac or "0").ljust(6, "0"))
        )
    except ValueError:
        return day
    zone = parse_timezone_offset(tz_offset) or _zone(default_timezone)
    stamp = local.replace(tzinfo=zone).isoformat(timespec="milliseconds" if frac else "seconds")
    return stamp[:-6] + "Z" if stamp.endswith("+00:00") else stamp


def _zone(name: str) -> timezone | ZoneInfo:
    tz = parse_timezone_offset(name)
    if tz is not None:
        return tz
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


# --- Person names --------------------------------------------------------------------------------


def pn_display(pn: str) -> str:
    """A readable display of a DICOM PN: its first non-empty component group, ``^`` as spaces."""
    for group in pn.split("="):
        text = " ".join(part.strip() for part in group.split("^") if part.strip())
        if text:
            return text
    return ""


def pn_values(value: str) -> list[str]:
    """The values of a possibly multi-valued (backslash-separated) PN, empty ones dropped."""
    return [v for v in value.split("\\") if v.strip("=^ ")]


def human_names(pn: str, use: str = "official") -> list[dict[str, Any]]:
    """A DICOM PN → FHIR HumanName JSON, one per non-empty component group.

    Components are family^given^middle^prefix^suffix; given and middle both become ``given``.
    ``text`` keeps the DICOM order (family first). When the PN carries more than one group
    (alphabetic=ideographic=phonetic, e.g. Japanese or Korean names), each HumanName is marked with
    the ``iso21090-EN-representation`` extension: ABC (alphabetic), IDE (ideographic), SYL (phonetic:
    the R4 value set NameRepresentationUse has ABC, IDE, SYL; there is no SYB).
    """
    groups = pn.split("=")[:3]
    present = [(i, g) for i, g in enumerate(groups) if g.strip("^ ")]
    names: list[dict[str, Any]] = []
    for index, group in present:
        parts = [p.strip() for p in group.split("^")] + [""] * 5
        family, given, middle, prefix, suffix = parts[:5]
        name: dict[str, Any] = {"use": use}
        text = " ".join(p for p in (family, given, middle) if p)
        if prefix or suffix:
            text = " ".join(p for p in (prefix, text, suffix) if p)
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
        if len(present) > 1:
            name["extension"] = [{"url": EN_REPRESENTATION, "valueCode": PN_REPRESENTATIONS[index]}]
        names.append(name)
    return names


def fhir_gender(sex: str) -> str:
    """PatientSex → AdministrativeGender: M, F, O as such; anything else (empty too) is ``unknown``."""
    return GENDERS.get(sex.strip().upper(), "unknown")


# --- Identifiers and codes -----------------------------------------------------------------------


def is_oid(value: str) -> bool:
    return bool(_OID.match(value))


def issuer_system(issuer: str, default_system: str, local_issuer_prefix: str) -> str:
    """An issuer of an identifier (IssuerOfPatientID, accession issuer) → a FHIR ``Identifier.system`` URI.

    An OID becomes ``urn:oid:<oid>``; a value that already is a URI stays as it is; a local name
    (``HOSP``) becomes ``<local_issuer_prefix><name>`` percent-encoded, so two issuers stay two systems;
    no issuer at all gives ``default_system``.
    """
    issuer = issuer.strip()
    if not issuer:
        return default_system
    if is_oid(issuer):
        return f"urn:oid:{issuer}"
    if _URI_SCHEME.match(issuer):
        return issuer
    return local_issuer_prefix + quote(issuer, safe="")


def oid_urn(uid: str) -> str:
    return f"urn:oid:{uid}"


def coding_system(scheme: str) -> str | None:
    """A DICOM Coding Scheme Designator → FHIR system URI; ``None`` for local (e.g. ``99…``) schemes."""
    scheme = scheme.strip()
    if scheme.startswith("urn:") or scheme.startswith("http"):
        return scheme
    return CODING_SCHEMES.get(scheme.upper())


def body_site(body_part: str) -> dict[str, str] | None:
    """BodyPartExamined → a SNOMED CT Coding for the terms of :data:`BODY_PARTS`; unknown terms → ``None``."""
    known = BODY_PARTS.get(body_part.strip().upper().replace(" ", ""))
    return {"system": SNOMED, "code": known[0], "display": known[1]} if known else None


def laterality(value: str) -> dict[str, str] | None:
    known = LATERALITY.get(value.strip().upper())
    return {"system": SNOMED, "code": known[0], "display": known[1]} if known else None
