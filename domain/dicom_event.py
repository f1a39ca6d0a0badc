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

from pydicom.datadict import dictionary_VR
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


# Maximum value lengths in characters by VR (PS3.5 table 6.2-1); PN per component group. VRs without a
# fixed maximum (UT, UC, UR, unknown) are clipped to EventLimits.unbounded_chars.
VR_MAX_CHARS = {
    "AE": 16,
    "AS": 4,
    "CS": 16,
    "DA": 8,
    "DS": 16,
    "DT": 26,
    "IS": 12,
    "LO": 64,
    "LT": 10240,
    "PN": 64,
    "SH": 16,
    "ST": 1024,
    "TM": 14,
    "UI": 64,
}


@dataclass(frozen=True, slots=True)
class EventLimits:
    """How much of a dataset an event may copy (see the ``receiver_event_*`` settings)."""

    max_values: int = 64  # values of one multi-valued attribute
    max_items: int = 64  # items of a sequence (procedure codes)
    unbounded_chars: int = 10240  # UT, UC, UR and unknown VRs


def _raw(ds: Dataset, keyword: str) -> Any:
    try:
        return ds.get(keyword)
    except _VALUE_ERRORS:
        return None


def _max_chars(keyword: str, limits: EventLimits) -> int:
    try:
        vr = dictionary_VR(keyword)
    except KeyError:
        return limits.unbounded_chars
    return VR_MAX_CHARS.get(vr, limits.unbounded_chars)


class _Reader:
    """Reads the attributes an event copies, each clipped to its VR's length; remembers what it clipped."""

    def __init__(self, limits: EventLimits) -> None:
        self.limits = limits
        self.clipped: list[str] = []

    def _clip(self, text: str, keyword: str, where: str, per_group: bool = False) -> str:
        limit = _max_chars(keyword, self.limits)
        if per_group:
            groups = text.split("=")
            clipped = "=".join(group[:limit] for group in groups[:3])
            changed = clipped != text
        else:
            clipped = text[:limit]
            changed = len(text) > limit
        if changed and where not in self.clipped:
            self.clipped.append(where)
        return clipped

    def _values(self, value: Any, where: str) -> list[Any]:
        values = list(value)
        if len(values) > self.limits.max_values:
            if where not in self.clipped:
                self.clipped.append(where)
            values = values[: self.limits.max_values]
        return values

    def text(self, ds: Dataset | None, keyword: str, where: str = "") -> str:
        where = where or keyword
        value = _raw(ds, keyword) if ds is not None else None
        if value is None:
            return ""
        if isinstance(value, PersonName):
            return self._clip(person_name(value), keyword, where, per_group=True)
        if isinstance(value, str | bytes) or not isinstance(value, Iterable):
            return self._clip(str(value).strip(), keyword, where)
        return "\\".join(self._clip(str(item).strip(), keyword, where) for item in self._values(value, where))

    def names(self, ds: Dataset, keyword: str) -> str:
        value = _raw(ds, keyword)
        if value is None:
            return ""
        if isinstance(value, PersonName | str):
            return self._clip(person_name(value), keyword, keyword, per_group=True)
        return "\\".join(
            self._clip(person_name(item), keyword, keyword, per_group=True) for item in self._values(value, keyword)
        )

    def codes(self, ds: Dataset, keyword: str) -> tuple[CodedValue, ...]:
        sequence = _raw(ds, keyword) or ()
        codes = []
        try:
            items = list(sequence)
        except _VALUE_ERRORS:
            return ()
        if len(items) > self.limits.max_items:
            self.clipped.append(keyword)
            items = items[: self.limits.max_items]
        for item in items:
            code = (
                self.text(item, "CodeValue", f"{keyword}>CodeValue")
                or self.text(item, "LongCodeValue", f"{keyword}>LongCodeValue")
                or self.text(item, "URNCodeValue", f"{keyword}>URNCodeValue")
            )
            if code:
                codes.append(
                    CodedValue(
                        code=code,
                        scheme=self.text(item, "CodingSchemeDesignator", f"{keyword}>CodingSchemeDesignator"),
                        meaning=self.text(item, "CodeMeaning", f"{keyword}>CodeMeaning"),
                    )
                )
        return tuple(codes)


def _int(ds: Dataset, keyword: str) -> int | None:
    """An IS value as an int, or None: empty, malformed, or outside IS's signed 32-bit range."""
    value = _raw(ds, keyword)
    try:
        number = int(value) if value not in (None, "") else None
    except _VALUE_ERRORS:
        return None
    return number if number is None or -(2**31) <= number < 2**31 else None


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


def _first_item(ds: Dataset, keyword: str) -> Dataset | None:
    sequence = _raw(ds, keyword)
    try:
        return sequence[0] if sequence else None
    except _VALUE_ERRORS:
        return None


def _accession_issuer(ds: Dataset, read: _Reader) -> str:
    item = _first_item(ds, "IssuerOfAccessionNumberSequence")
    if item is None:
        return ""
    return read.text(item, "LocalNamespaceEntityID") or read.text(item, "UniversalEntityID")


def instance_title(ds: Dataset, read: _Reader | None = None) -> str:
    """A human title for the instance: content label, concept name, document title, else the image type."""
    read = read or _Reader(EventLimits())
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
    read = _Reader(limits or EventLimits())
    text, names = read.text, read.names
    title = instance_title(ds, read)
    return InstanceEvent(
        study_uid=identity.study_uid,
        series_uid=identity.series_uid,
        sop_instance_uid=identity.sop_instance_uid,
        sop_class_uid=identity.sop_class_uid,
        transfer_syntax_uid=reception.transfer_syntax_uid,
        instance_number=_int(ds, "InstanceNumber"),
        series_number=_int(ds, "SeriesNumber"),
        modality=text(ds, "Modality"),
        study_date=text(ds, "StudyDate"),
        study_time=text(ds, "StudyTime"),
        timezone_offset=text(ds, "TimezoneOffsetFromUTC"),
        study_id=text(ds, "StudyID"),
        study_description=text(ds, "StudyDescription"),
        accession_number=text(ds, "AccessionNumber"),
        accession_issuer=_accession_issuer(ds, read),
        referring_physician=names(ds, "ReferringPhysicianName"),
        procedure_codes=read.codes(ds, "ProcedureCodeSequence"),
        institution=text(ds, "InstitutionName"),
        patient_id=text(ds, "PatientID"),
        issuer_of_patient_id=text(ds, "IssuerOfPatientID"),
        patient_name=names(ds, "PatientName"),
        birth_date=text(ds, "PatientBirthDate"),
        sex=text(ds, "PatientSex"),
        series_description=text(ds, "SeriesDescription"),
        series_date=text(ds, "SeriesDate"),
        series_time=text(ds, "SeriesTime"),
        body_part_examined=text(ds, "BodyPartExamined"),
        laterality=text(ds, "Laterality") or text(ds, "ImageLaterality"),
        performing_physician=names(ds, "PerformingPhysicianName"),
        operators_name=names(ds, "OperatorsName"),
        manufacturer=text(ds, "Manufacturer"),
        model=text(ds, "ManufacturerModelName"),
        instance_title=title,
        calling_ae=reception.calling_ae,
        called_ae=reception.called_ae,
        peer_address=reception.peer_address,
        received_at=reception.received_at,
        stored_path=reception.stored_path,
        size=reception.size,
        sha256=reception.sha256,
        duplicate=reception.duplicate,
        replaced=reception.replaced,
        clipped=tuple(read.clipped),
    )
