"""The records published to ``imaging.raw``, their wire format and their one typed decoder.

Five kinds, all JSON objects (UTF-8) keyed by the StudyInstanceUID: one :class:`InstanceEvent` per
stored instance, a :class:`CommitmentRequest` when a sender asked for Storage Commitment of
instances of the study (``"record_type": "storage_commitment"``), a :class:`StowBoundary` when a
DICOMweb STOW-RS request stored every instance it carried and the receiver treats one request as a
study boundary (``"stow_request"``), a :class:`PerformedProcedureStep` when a modality's MPPS ended
(``"performed_procedure_step"``), and a :class:`PatientResolution` when an operator decided a
patient conflict (``"patient_resolution"``). Instance events carry no record type.

:func:`decode_raw_record` is the trust boundary: it checks the type and range of every field (msgspec,
strict: no coercion of ``"12"`` into 12), so a record that decodes cannot raise further down. Every
defect becomes :class:`~domain.errors.InvalidRecordError` with a reason name; unknown fields are
ignored (a newer receiver may add some).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from domain.errors import InvalidRecordError
from domain.uids import UID_MAX_LENGTH, UID_PATTERN

EVENT_SCHEMA_VERSION = 4  # 3: issuers' universal ids, request attributes, regions, image laterality; 4: rejections
COMMITMENT_RECORD_TYPE = "storage_commitment"
RESOLUTION_RECORD_TYPE = "patient_resolution"
STOW_RECORD_TYPE = "stow_request"
MPPS_RECORD_TYPE = "performed_procedure_step"
MPPS_SCHEMA_VERSION = 1

# Bounds of the decoder. The receiver clips every text attribute to its VR's length (UT and unknown
# VRs to a setting below this), so a record beyond them was not written by StudyStream.
TEXT_MAX_CHARS = 65_536
CODES_MAX_ITEMS = 256
COMMITMENT_MAX_UIDS = 100_000
MPPS_MAX_UIDS = 100_000  # instances one performed_procedure_step record names
REJECTION_MAX_UIDS = 100_000  # instances one rejection note names

Uid = Annotated[str, Meta(pattern=UID_PATTERN, max_length=UID_MAX_LENGTH)]
Text = Annotated[str, Meta(max_length=TEXT_MAX_CHARS)]
ShortText = Annotated[str, Meta(max_length=256)]
IntegerString = Annotated[int, Meta(ge=-(2**31), le=2**31 - 1)]  # DICOM IS: a signed 32-bit integer
ByteCount = Annotated[int, Meta(ge=0, le=2**62)]
Sha256 = Annotated[str, Meta(pattern=r"\A([0-9a-f]{64})?\Z")]
SchemaVersion = Annotated[int, Meta(ge=1, le=1000)]


class CodedValue(msgspec.Struct, frozen=True, gc=False):
    """A DICOM code sequence item (code value, coding scheme designator, code meaning)."""

    code: Text
    scheme: ShortText = ""
    meaning: Text = ""


Codes = Annotated[tuple[CodedValue, ...], Meta(max_length=CODES_MAX_ITEMS)]


class InstanceEvent(msgspec.Struct, frozen=True, gc=False):
    """Everything StudyStream needs to know about one received instance (no pixel data)."""

    study_uid: Uid
    series_uid: Uid
    sop_instance_uid: Uid
    sop_class_uid: Uid
    transfer_syntax_uid: Annotated[str, Meta(max_length=UID_MAX_LENGTH)] = ""
    instance_number: IntegerString | None = None
    series_number: IntegerString | None = None
    modality: ShortText = ""
    # Study level
    study_date: ShortText = ""  # DICOM DA, YYYYMMDD
    study_time: ShortText = ""  # DICOM TM
    timezone_offset: ShortText = ""  # TimezoneOffsetFromUTC, +HHMM / -HHMM
    study_id: Text = ""
    study_description: Text = ""
    accession_number: Text = ""
    accession_issuer: Text = ""  # IssuerOfAccessionNumberSequence > LocalNamespaceEntityID
    accession_issuer_universal: Text = ""  # ... > UniversalEntityID
    accession_issuer_universal_type: ShortText = ""  # ... > UniversalEntityIDType (ISO, UUID, URI, ...)
    referring_physician: Text = ""
    reading_physicians: Text = ""  # NameOfPhysiciansReadingStudy, PN values joined by backslashes
    procedure_codes: Codes = ()
    reason_codes: Codes = ()  # ReasonForRequestedProcedureCodeSequence (also inside RequestAttributesSequence)
    reason_text: Text = ""  # ReasonForTheRequestedProcedure (likewise)
    placer_order_number: Text = ""  # PlacerOrderNumberImagingServiceRequest
    placer_order_issuer: Text = ""  # OrderPlacerIdentifierSequence > LocalNamespaceEntityID
    placer_order_issuer_universal: Text = ""
    placer_order_issuer_universal_type: ShortText = ""
    institution: Text = ""
    department: Text = ""  # InstitutionalDepartmentName
    # Patient level (PHI: never logged)
    patient_id: Text = ""
    issuer_of_patient_id: Text = ""
    patient_issuer_universal: Text = ""  # IssuerOfPatientIDQualifiersSequence > UniversalEntityID
    patient_issuer_universal_type: ShortText = ""
    patient_name: Text = ""  # decoded to Unicode, all component groups joined by '='
    birth_date: ShortText = ""
    sex: ShortText = ""
    # Series level
    series_description: Text = ""
    series_date: ShortText = ""
    series_time: ShortText = ""
    body_part_examined: Text = ""
    anatomic_regions: Codes = ()  # AnatomicRegionSequence
    laterality: ShortText = ""  # Laterality (0020,0060), a series attribute (schema 2: or ImageLaterality)
    image_laterality: ShortText = ""  # ImageLaterality (0020,0062), per image
    performing_physician: Text = ""
    operators_name: Text = ""
    manufacturer: Text = ""
    model: Text = ""
    # Instance level
    instance_title: Text = ""
    # An IHE IOCM rejection note (a Key Object Selection document titled with a rejection code): the code
    # (DCM 113001, 113037, 113038 or 113039) and the instances of this study it rejects.
    rejection_code: ShortText = ""
    rejected_uids: Annotated[tuple[Uid, ...], Meta(max_length=REJECTION_MAX_UIDS)] = ()
    # Reception
    calling_ae: ShortText = ""
    called_ae: ShortText = ""
    peer_address: ShortText = ""
    received_at: ShortText = ""  # ISO 8601 UTC
    stored_path: Text = ""
    size: ByteCount = 0
    sha256: Sha256 = ""
    duplicate: bool = False  # same SOP Instance UID and identical bytes as an earlier instance
    replaced: bool = False  # same SOP Instance UID, different bytes: the stored file was replaced
    placed_at_ns: Annotated[int, Meta(ge=0, le=2**63 - 1)] = 0  # when the file was placed: the last placed wins
    clipped: Annotated[tuple[ShortText, ...], Meta(max_length=CODES_MAX_ITEMS)] = ()  # attributes cut to their VR
    # Attributes decoded by character sets that SpecificCharacterSet did not declare (escape sequences).
    repaired: Annotated[tuple[ShortText, ...], Meta(max_length=CODES_MAX_ITEMS)] = ()
    schema_version: SchemaVersion = EVENT_SCHEMA_VERSION

    @property
    def key(self) -> bytes:
        """The Kafka key: the StudyInstanceUID, so every instance of a study lands on one partition."""
        return self.study_uid.encode("ascii")


class NamedInstances(msgspec.Struct, frozen=True, gc=False):
    """Instances of one study a peer named as complete, all stored: the study is complete now.

    The common shape of :class:`CommitmentRequest` and :class:`StowBoundary`, applied by one rule
    (:func:`domain.batch.apply_commitment`). A request naming more instances than fit one message comes
    in parts (1-based): all must be read.
    """

    study_uid: Uid
    transaction_uid: Uid
    sop_instance_uids: Annotated[tuple[Uid, ...], Meta(min_length=1, max_length=COMMITMENT_MAX_UIDS)]
    calling_ae: ShortText = ""
    received_at: ShortText = ""  # ISO 8601 UTC
    record_type: str = ""
    part: Annotated[int, Meta(ge=1, le=10_000)] = 1
    parts: Annotated[int, Meta(ge=1, le=10_000)] = 1

    @property
    def key(self) -> bytes:
        return self.study_uid.encode("ascii")

    def __post_init__(self) -> None:
        if self.part > self.parts:
            raise ValueError("part beyond parts")


class CommitmentRequest(NamedInstances, frozen=True, gc=False):
    """A Storage Commitment request's instances of one study (``"commitment_request"``)."""

    record_type: str = COMMITMENT_RECORD_TYPE


class StowBoundary(NamedInstances, frozen=True, gc=False):
    """A STOW-RS request's instances of one study, all stored, and the request complete: with
    ``receiver_stow_is_study_boundary`` the study is complete now (as for Storage Commitment).

    ``transaction_uid`` identifies the request (a UID the receiver made up); ``calling_ae`` is the
    receiver's ``receiver_dicomweb_calling_ae``, as on the instance events.
    """

    record_type: str = STOW_RECORD_TYPE


class PerformedProcedureStep(msgspec.Struct, frozen=True, gc=False):
    """A Modality Performed Procedure Step of the study that ended (``"performed_procedure_step"``).

    COMPLETED names the instances the step produced: the study is complete once every one is in.
    DISCONTINUED carries the reason (code value and meaning of the step's discontinuation reason code);
    it completes nothing. ``truncated``: the step named more instances than the receiver keeps
    (``receiver_mpps_max_instances``), so the list is not the whole step and completes nothing either.
    No patient data.
    """

    study_uid: Uid
    mpps_uid: Uid  # the step's SOP Instance UID
    status: Literal["COMPLETED", "DISCONTINUED"]
    sop_instance_uids: Annotated[tuple[Uid, ...], Meta(max_length=MPPS_MAX_UIDS)] = ()
    truncated: bool = False
    reason_code: Annotated[str, Meta(max_length=64)] = ""
    reason_meaning: Annotated[str, Meta(max_length=64)] = ""
    calling_ae: ShortText = ""
    received_at: ShortText = ""  # ISO 8601 UTC: when the receiver answered the N-SET that ended the step
    record_type: str = MPPS_RECORD_TYPE
    schema_version: SchemaVersion = MPPS_SCHEMA_VERSION

    @property
    def key(self) -> bytes:
        return self.study_uid.encode("ascii")


class PatientResolution(msgspec.Struct, frozen=True, gc=False):
    """An operator's decision for a study in conflict: it is the patient ``patient_key`` names
    (``studystream resolve``). Covers the identities the study holds when the aggregator reads it."""

    study_uid: Uid
    patient_key: Annotated[str, Meta(pattern=r"\A[0-9a-f]{16}\Z")]
    requested_at: ShortText = ""  # ISO 8601 UTC
    requested_by: ShortText = ""  # the operator's login, as the command saw it
    record_type: str = RESOLUTION_RECORD_TYPE

    @property
    def key(self) -> bytes:
        return self.study_uid.encode("ascii")


RawRecord = InstanceEvent | CommitmentRequest | StowBoundary | PatientResolution | PerformedProcedureStep

_encoder = msgspec.json.Encoder()
_instance_decoder = msgspec.json.Decoder(InstanceEvent)
_commitment_decoder = msgspec.json.Decoder(CommitmentRequest)
_resolution_decoder = msgspec.json.Decoder(PatientResolution)
_stow_decoder = msgspec.json.Decoder(StowBoundary)
_mpps_decoder = msgspec.json.Decoder(PerformedProcedureStep)


class _Kind(msgspec.Struct, gc=False):
    record_type: str | None = None


_kind_decoder = msgspec.json.Decoder(_Kind)


def encode_instance_event(event: InstanceEvent) -> bytes:
    """The JSON bytes published to ``imaging.raw``."""
    return _encoder.encode(event)


def encode_commitment_request(request: CommitmentRequest) -> bytes:
    return _encoder.encode(request)


def encode_resolution(resolution: PatientResolution) -> bytes:
    return _encoder.encode(resolution)


def encode_performed_procedure_step(step: PerformedProcedureStep) -> bytes:
    return _encoder.encode(step)


def encode_stow_boundary(boundary: StowBoundary) -> bytes:
    return _encoder.encode(boundary)


def invalid_record(exc: msgspec.MsgspecError, kind: str) -> InvalidRecordError:
    """msgspec's error as ours: the path of the bad field, never its value."""
    if isinstance(exc, msgspec.ValidationError):
        return InvalidRecordError(f"{kind}: {exc}", reason="invalid_field")
    return InvalidRecordError(f"{kind}: not JSON ({exc})", reason="not_json")


def _as_bytes(raw: bytes | str | None) -> bytes:
    if raw is None or raw == b"":
        raise InvalidRecordError("empty message", reason="empty")
    return raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw


def decode_raw_record(raw: bytes | str | None) -> RawRecord:
    """Parse and validate one ``imaging.raw`` value of any kind; raise :class:`InvalidRecordError` on any defect."""
    data = _as_bytes(raw)
    if b'"record_type"' not in data:  # the common case: an instance event, one pass
        return decode_instance_event(data)
    try:
        kind = _kind_decoder.decode(data).record_type
    except msgspec.MsgspecError as exc:
        raise invalid_record(exc, "imaging.raw record") from None
    if kind is None:
        return decode_instance_event(data)
    decoder = {
        COMMITMENT_RECORD_TYPE: _commitment_decoder,
        RESOLUTION_RECORD_TYPE: _resolution_decoder,
        STOW_RECORD_TYPE: _stow_decoder,
        MPPS_RECORD_TYPE: _mpps_decoder,
    }.get(kind)
    if decoder is None:
        raise InvalidRecordError("unknown record_type", reason="unknown_record_type")
    try:
        return decoder.decode(data)
    except msgspec.MsgspecError as exc:
        raise invalid_record(exc, kind) from None


def decode_instance_event(raw: bytes | str | None) -> InstanceEvent:
    """Parse and validate one instance event; raise :class:`InvalidRecordError` on any defect."""
    try:
        return _instance_decoder.decode(_as_bytes(raw))
    except msgspec.MsgspecError as exc:
        raise invalid_record(exc, "instance event") from None
