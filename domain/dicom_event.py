"""DICOM dataset → :class:`InstanceEvent`: the pure half of the receiver.

No I/O here. The receiver reads the stored bytes with ``stop_before_pixels`` and hands the dataset and
what it knows about the reception to :func:`instance_event`. :func:`check_identity` decides whether a
dataset may be stored at all; its :class:`InstanceRejected` carries a reason name that the receiver maps
to a DICOM status and counts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

from domain.errors import StudyStreamError
from domain.events import CodedValue, InstanceEvent
from domain.uids import is_valid_uid

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
UNDEFINED_LENGTH = 0xFFFFFFFF
# pydicom raises these on values it cannot convert (a malformed IS, an undecodable string ...)
_VALUE_ERRORS = (ValueError, TypeError, AttributeError, LookupError, OverflowError, UnicodeError)


class InstanceRejected(StudyStreamError):
    """A received dataset that must not be stored; ``reason`` is a short metric-friendly name."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Reception:
    """What the receiver knows about one instance besides its content."""

    transfer_syntax_uid: str
    calling_ae: str
    called_ae: str
    peer_address: str
    received_at: str
    stored_path: str
    size: int
    sha256: str
    duplicate: bool = False
    replaced: bool = False


@dataclass(frozen=True, slots=True)
class InstanceIdentity:
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str


def parse_defect(ds: Dataset, transfer_syntax_uid: str, encoded_size: int | None = None) -> str | None:
    """Why a leniently read dataset is not what its sender encoded (pydicom reads past many defects), or None.

    ``encoded_size`` is the size of the bytes read (the staged file): an element whose declared length
    runs past it is truncated even when pydicom deferred reading its value (non-DICOM bytes such as an
    image file read as DICOM give one such element with a length of hundreds of megabytes).
    """
    implicit_expected = transfer_syntax_uid == IMPLICIT_VR_LITTLE_ENDIAN
    read_implicit = ds.original_encoding[0] if ds.original_encoding else None
    if read_implicit is not None and read_implicit != implicit_expected:
        return "encoding does not match the transfer syntax"
    for tag in ds.keys():
        # Raw as read (Dataset.elements() would convert, and read a deferred value).
        element = ds.get_item(tag, keep_deferred=True)
        if not isinstance(element, RawDataElement) or element.length == UNDEFINED_LENGTH:
            continue
        if element.value is not None and len(element.value) < element.length:
            return f"element {element.tag} truncated"
        if encoded_size is not None and element.value_tell + element.length > encoded_size:
            return f"element {element.tag} runs past the end of the data"
    return None


def check_identity(ds: Dataset, request_sop_class: str, request_sop_instance: str) -> InstanceIdentity:
    """The instance's UIDs, or :class:`InstanceRejected` when they are missing, malformed or contradict the request."""
    uids: dict[str, str] = {}
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        try:
            value = str(ds.get(keyword, "") or "").strip()
        except _VALUE_ERRORS as exc:
            raise InstanceRejected("malformed_uid", f"{keyword} unreadable ({type(exc).__name__})") from None
        if not value:
            raise InstanceRejected("missing_uid", f"{keyword} missing")
        if not is_valid_uid(value):
            raise InstanceRejected("malformed_uid", f"{keyword} is not a valid UID")
        uids[keyword] = value
    if uids["SOPClassUID"] != request_sop_class.strip():
        raise InstanceRejected(
            "sop_class_mismatch", f"dataset SOP class {uids['SOPClassUID']} != request {request_sop_class}"
        )
    if uids["SOPInstanceUID"] != request_sop_instance.strip():
        raise InstanceRejected(
            "sop_instance_mismatch", f"dataset SOP instance {uids['SOPInstanceUID']} != request {request_sop_instance}"
        )
    return InstanceIdentity(
        study_uid=uids["StudyInstanceUID"],
        series_uid=uids["SeriesInstanceUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
    )


def _raw(ds: Dataset, keyword: str) -> Any:
    try:
        return ds.get(keyword)
    except _VALUE_ERRORS:
        return None


def _text(ds: Dataset, keyword: str) -> str:
    value = _raw(ds, keyword)
    if value is None:
        return ""
    if isinstance(value, PersonName):
        return person_name(value)
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        return str(value).strip()
    return "\\".join(str(item).strip() for item in value)


def _int(ds: Dataset, keyword: str) -> int | None:
    value = _raw(ds, keyword)
    try:
        return int(value) if value not in (None, "") else None
    except _VALUE_ERRORS:
        return None


def person_name(value: PersonName | str | None) -> str:
    """All component groups (alphabetic=ideographic=phonetic) as Unicode, trailing empty groups dropped."""
    if value is None:
        return ""
    if not isinstance(value, PersonName):
        return str(value).strip()
    try:
        groups = list(value.components)
    except _VALUE_ERRORS:
        return ""
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups)


def _names(ds: Dataset, keyword: str) -> str:
    value = _raw(ds, keyword)
    if value is None:
        return ""
    if isinstance(value, PersonName | str):
        return person_name(value)
    return "\\".join(person_name(item) for item in value)


def _first_item(ds: Dataset, keyword: str) -> Dataset | None:
    sequence = _raw(ds, keyword)
    try:
        return sequence[0] if sequence else None
    except _VALUE_ERRORS:
        return None


def _codes(ds: Dataset, keyword: str) -> tuple[CodedValue, ...]:
    sequence = _raw(ds, keyword) or ()
    codes = []
    for item in sequence:
        code = _text(item, "CodeValue") or _text(item, "LongCodeValue") or _text(item, "URNCodeValue")
        if code:
            codes.append(
                CodedValue(code=code, scheme=_text(item, "CodingSchemeDesignator"), meaning=_text(item, "CodeMeaning"))
            )
    return tuple(codes)


def _accession_issuer(ds: Dataset) -> str:
    item = _first_item(ds, "IssuerOfAccessionNumberSequence")
    if item is None:
        return ""
    return _text(item, "LocalNamespaceEntityID") or _text(item, "UniversalEntityID")


def instance_title(ds: Dataset) -> str:
    """A human title for the instance: content label, concept name, document title, else the image type."""
    concept = _first_item(ds, "ConceptNameCodeSequence")
    return (
        _text(ds, "ContentLabel")
        or (_text(concept, "CodeMeaning") if concept is not None else "")
        or _text(ds, "DocumentTitle")
        or _text(ds, "ImageType").replace("\\", " ")
    )


def instance_event(ds: Dataset, identity: InstanceIdentity, reception: Reception) -> InstanceEvent:
    """The ``imaging.raw`` event for one stored instance (the dataset is read without pixel data)."""
    return InstanceEvent(
        study_uid=identity.study_uid,
        series_uid=identity.series_uid,
        sop_instance_uid=identity.sop_instance_uid,
        sop_class_uid=identity.sop_class_uid,
        transfer_syntax_uid=reception.transfer_syntax_uid,
        instance_number=_int(ds, "InstanceNumber"),
        series_number=_int(ds, "SeriesNumber"),
        modality=_text(ds, "Modality"),
        study_date=_text(ds, "StudyDate"),
        study_time=_text(ds, "StudyTime"),
        timezone_offset=_text(ds, "TimezoneOffsetFromUTC"),
        study_id=_text(ds, "StudyID"),
        study_description=_text(ds, "StudyDescription"),
        accession_number=_text(ds, "AccessionNumber"),
        accession_issuer=_accession_issuer(ds),
        referring_physician=_names(ds, "ReferringPhysicianName"),
        procedure_codes=_codes(ds, "ProcedureCodeSequence"),
        institution=_text(ds, "InstitutionName"),
        patient_id=_text(ds, "PatientID"),
        issuer_of_patient_id=_text(ds, "IssuerOfPatientID"),
        patient_name=_names(ds, "PatientName"),
        birth_date=_text(ds, "PatientBirthDate"),
        sex=_text(ds, "PatientSex"),
        series_description=_text(ds, "SeriesDescription"),
        series_date=_text(ds, "SeriesDate"),
        series_time=_text(ds, "SeriesTime"),
        body_part_examined=_text(ds, "BodyPartExamined"),
        laterality=_text(ds, "Laterality") or _text(ds, "ImageLaterality"),
        performing_physician=_names(ds, "PerformingPhysicianName"),
        operators_name=_names(ds, "OperatorsName"),
        manufacturer=_text(ds, "Manufacturer"),
        model=_text(ds, "ManufacturerModelName"),
        instance_title=instance_title(ds),
        calling_ae=reception.calling_ae,
        called_ae=reception.called_ae,
        peer_address=reception.peer_address,
        received_at=reception.received_at,
        stored_path=reception.stored_path,
        size=reception.size,
        sha256=reception.sha256,
        duplicate=reception.duplicate,
        replaced=reception.replaced,
    )
