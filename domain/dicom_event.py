"""DICOM dataset → :class:`InstanceEvent`: the pure half of the receiver.

No I/O here. The receiver reads the stored bytes with ``stop_before_pixels`` and hands the dataset and
what it knows about the reception to :func:`instance_event`. :func:`check_identity` decides whether a
dataset may be stored at all; its :class:`InstanceRejected` carries a reason name that the receiver maps
to a DICOM status and counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from domain.dicom_reader import (
    VALUE_ERRORS,
    BoundedReader,
    EventLimits,
    element_value,
    int_value,
    plain_uid,
    raw_value,
    read_element,
)
from domain.errors import StudyStreamError
from domain.events import InstanceEvent
from domain.rejection import KEY_OBJECT_SELECTION, rejection_code_of
from domain.uids import is_valid_uid

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
UNDEFINED_LENGTH = 0xFFFFFFFF
# pydicom raises these on values it cannot convert (a malformed IS, an undecodable string ...)


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
            element = read_element(ds, keyword)
            value = plain_uid(element, keyword)
            if value is None:
                # UIDs are ASCII: no character set to look up (the dataset's costs a lookup of its own).
                value = str(element_value(ds, element, keyword, "iso8859") or "").strip()
        except VALUE_ERRORS as exc:
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


# Maximum value lengths in characters by VR (PS3.5 table 6.2-1); PN per component group. VRs without a
# fixed maximum (UT, UC, UR, unknown) are clipped to EventLimits.unbounded_chars.
def _first_item(ds: Dataset, keyword: str) -> Dataset | None:
    sequence = raw_value(ds, keyword)
    try:
        return sequence[0] if sequence else None
    except VALUE_ERRORS:
        return None


@dataclass(frozen=True, slots=True)
class Issuer:
    """An HL7 v2 HD issuer as DICOM codes it: a local namespace name and/or a universal id with its type."""

    local: str = ""
    universal: str = ""
    universal_type: str = ""


def _issuer(read: BoundedReader, ds: Dataset, sequence: str) -> Issuer:
    item = _first_item(ds, sequence)
    if item is None:
        return Issuer()
    return Issuer(
        local=read.text(item, "LocalNamespaceEntityID", f"{sequence}>LocalNamespaceEntityID"),
        universal=read.text(item, "UniversalEntityID", f"{sequence}>UniversalEntityID"),
        universal_type=read.text(item, "UniversalEntityIDType", f"{sequence}>UniversalEntityIDType").upper(),
    )


def _requested(ds: Dataset, keyword: str) -> Dataset | None:
    """Where a request attribute is: the dataset itself, else the first RequestAttributesSequence item holding it.

    Image IODs carry the order's reason and numbers inside RequestAttributesSequence; worklist-fed
    secondary captures often at the top level.
    """
    if raw_value(ds, keyword) not in (None, "", ()):
        return ds
    sequence = raw_value(ds, "RequestAttributesSequence")
    try:
        items = list(sequence or ())[:8]
    except VALUE_ERRORS:
        return None
    for item in items:
        if raw_value(item, keyword) not in (None, "", ()):
            return item
    return None


def _items(ds: Dataset, keyword: str, limit: int) -> list[Dataset]:
    """The first ``limit`` items of a sequence (none when absent or unreadable)."""
    sequence = raw_value(ds, keyword)
    try:
        return [item for item in list(sequence or ())[:limit] if isinstance(item, Dataset)]
    except VALUE_ERRORS:
        return []


def _uid(ds: Dataset, keyword: str) -> str:
    value = raw_value(ds, keyword)
    text = value.strip(" \x00") if isinstance(value, str) else ""
    return text if is_valid_uid(text) else ""


_EVIDENCE = "CurrentRequestedProcedureEvidenceSequence"
_REFERENCED_SOP = f"{_EVIDENCE}>ReferencedSeriesSequence>ReferencedSOPSequence>ReferencedSOPInstanceUID"


def _rejected_references(read: BoundedReader, ds: Dataset, study_uid: str) -> tuple[str, ...]:
    """The instances of ``study_uid`` a rejection note names, at most ``max_references`` (else clipped).

    References to other studies are left alone: IHE IOCM puts a note in the study it rejects from.
    """
    limit = read.limits.max_references
    named: dict[str, None] = {}
    for study in _items(ds, _EVIDENCE, limit):
        if _uid(study, "StudyInstanceUID") != study_uid:
            continue
        for series in _items(study, "ReferencedSeriesSequence", limit):
            for sop in _items(series, "ReferencedSOPSequence", limit + 1):
                uid = _uid(sop, "ReferencedSOPInstanceUID")
                if not uid or len(named) >= limit:
                    read.mark_clipped(_REFERENCED_SOP)  # not a UID, or past the limit
                    continue
                named[uid] = None
    return tuple(named)


def _rejection_fields(read: BoundedReader, ds: Dataset, identity: InstanceIdentity) -> dict[str, Any]:
    """A Key Object Selection document titled with a rejection code: the code and what it rejects."""
    title = _first_item(ds, "ConceptNameCodeSequence")
    if title is None:
        return {}
    where = "ConceptNameCodeSequence>"
    scheme = read.text(title, "CodingSchemeDesignator", f"{where}CodingSchemeDesignator")
    code = rejection_code_of(identity.sop_class_uid, scheme, read.text(title, "CodeValue", f"{where}CodeValue"))
    if not code:
        return {}
    return {"rejection_code": code, "rejected_uids": _rejected_references(read, ds, identity.study_uid)}


def instance_title(ds: Dataset, read: BoundedReader | None = None) -> str:
    """A human title for the instance: content label, concept name, document title, else the image type."""
    read = read or BoundedReader(EventLimits())
    concept = _first_item(ds, "ConceptNameCodeSequence")
    return (
        read.text(ds, "ContentLabel")
        or (read.text(concept, "CodeMeaning", "ConceptNameCodeSequence>CodeMeaning") if concept is not None else "")
        or read.text(ds, "DocumentTitle")
        or read.text(ds, "ImageType").replace("\\", " ")
    )


def instance_event(
    ds: Dataset, identity: InstanceIdentity, reception: Reception, limits: EventLimits | None = None
) -> InstanceEvent:
    """The ``imaging.raw`` event for one stored instance (the dataset is read without pixel data).

    Every text attribute is clipped to its VR's maximum length and every repeated value to
    ``limits``, so the event's size is bounded whatever the dataset holds; ``clipped`` names what was cut.
    """
    read = BoundedReader(limits or EventLimits())
    fields = {**_study_fields(read, ds), **_request_fields(read, ds), **_patient_fields(read, ds)}
    fields.update(_series_fields(read, ds))
    if identity.sop_class_uid == KEY_OBJECT_SELECTION:
        fields.update(_rejection_fields(read, ds, identity))
    fields["instance_title"] = instance_title(ds, read)
    read.fit(InstanceEvent, fields)
    return InstanceEvent(
        study_uid=identity.study_uid,
        series_uid=identity.series_uid,
        sop_instance_uid=identity.sop_instance_uid,
        sop_class_uid=identity.sop_class_uid,
        transfer_syntax_uid=reception.transfer_syntax_uid,
        instance_number=int_value(ds, "InstanceNumber"),
        calling_ae=reception.calling_ae,
        called_ae=reception.called_ae,
        peer_address=reception.peer_address,
        received_at=reception.received_at,
        stored_path=reception.stored_path,
        size=reception.size,
        sha256=reception.sha256,
        duplicate=reception.duplicate,
        replaced=reception.replaced,
        **fields,
        clipped=tuple(read.clipped),  # after every field was read
        repaired=tuple(read.repaired),
    )


def _study_fields(read: BoundedReader, ds: Dataset) -> dict[str, Any]:
    text, names = read.text, read.names
    accession_issuer = _issuer(read, ds, "IssuerOfAccessionNumberSequence")
    return {
        "study_date": text(ds, "StudyDate"),
        "study_time": text(ds, "StudyTime"),
        "timezone_offset": text(ds, "TimezoneOffsetFromUTC"),
        "study_id": text(ds, "StudyID"),
        "study_description": text(ds, "StudyDescription"),
        "accession_number": text(ds, "AccessionNumber"),
        "accession_issuer": accession_issuer.local,
        "accession_issuer_universal": accession_issuer.universal,
        "accession_issuer_universal_type": accession_issuer.universal_type,
        "referring_physician": names(ds, "ReferringPhysicianName"),
        "reading_physicians": names(ds, "NameOfPhysiciansReadingStudy"),
        "procedure_codes": read.codes(ds, "ProcedureCodeSequence"),
        "institution": text(ds, "InstitutionName"),
        "department": text(ds, "InstitutionalDepartmentName"),
    }


def _request_fields(read: BoundedReader, ds: Dataset) -> dict[str, Any]:
    """The order's attributes, at the top level or in RequestAttributesSequence (:func:`_requested`)."""
    placer = _requested(ds, "PlacerOrderNumberImagingServiceRequest")
    placer_issuer = _issuer(read, placer, "OrderPlacerIdentifierSequence") if placer is not None else Issuer()
    reason_codes = _requested(ds, "ReasonForRequestedProcedureCodeSequence")
    reason_text = _requested(ds, "ReasonForTheRequestedProcedure")
    return {
        "reason_codes": read.codes(reason_codes, "ReasonForRequestedProcedureCodeSequence") if reason_codes else (),
        "reason_text": read.text(reason_text, "ReasonForTheRequestedProcedure"),
        "placer_order_number": read.text(placer, "PlacerOrderNumberImagingServiceRequest"),
        "placer_order_issuer": placer_issuer.local,
        "placer_order_issuer_universal": placer_issuer.universal,
        "placer_order_issuer_universal_type": placer_issuer.universal_type,
    }


def _patient_fields(read: BoundedReader, ds: Dataset) -> dict[str, Any]:
    patient_issuer = _issuer(read, ds, "IssuerOfPatientIDQualifiersSequence")
    return {
        "patient_id": read.text(ds, "PatientID"),
        "issuer_of_patient_id": read.text(ds, "IssuerOfPatientID"),
        "patient_issuer_universal": patient_issuer.universal,
        "patient_issuer_universal_type": patient_issuer.universal_type,
        "patient_name": read.names(ds, "PatientName"),
        "birth_date": read.text(ds, "PatientBirthDate"),
        "sex": read.text(ds, "PatientSex"),
    }


def _series_fields(read: BoundedReader, ds: Dataset) -> dict[str, Any]:
    text, names = read.text, read.names
    return {
        "series_number": int_value(ds, "SeriesNumber"),
        "modality": text(ds, "Modality"),
        "series_description": text(ds, "SeriesDescription"),
        "series_date": text(ds, "SeriesDate"),
        "series_time": text(ds, "SeriesTime"),
        "body_part_examined": text(ds, "BodyPartExamined"),
        "anatomic_regions": read.codes(ds, "AnatomicRegionSequence"),
        "laterality": text(ds, "Laterality").upper(),
        "image_laterality": text(ds, "ImageLaterality").upper(),
        "performing_physician": names(ds, "PerformingPhysicianName"),
        "operators_name": names(ds, "OperatorsName"),
        "manufacturer": text(ds, "Manufacturer"),
        "model": text(ds, "ManufacturerModelName"),
    }
