"""The records of one study's aggregation state, how they are stored, and their table keys (pure).

The state of one study is split so that a new instance never rewrites the whole study:

- one small :class:`StudyHeader` per study (patient, study attributes, counts, clocks, status, revision),
- one :class:`SeriesInfo` per series, written when the series first appears or gains an attribute,
- one :class:`InstanceInfo` per SOP Instance UID (the de-duplication key).

The building blocks here make them from an event and merge them (the latest instance's values win);
the rules that advance a study's state are in :mod:`domain.study`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

import msgspec

from domain.completeness import CompletedBy, Source
from domain.errors import InvalidRecordError
from domain.events import Codes, InstanceEvent, ShortText, Text, Uid
from domain.patient import IdentityOptions, identity_key, patient_identity
from domain.uids import is_valid_uid

_T = TypeVar("_T", bound=msgspec.Struct)
_replace = msgspec.structs.replace

STATE_SCHEMA_VERSION = 4  # 3: patient identities, latest-wins attributes, image lateralities; 4: sources, completed_by
DEFAULT_IDENTITY = IdentityOptions()
PATIENT_CONFLICT = "patient_conflict"  # the reason a conflicting revision is dead-lettered with


class StudyStatus(StrEnum):
    RECEIVING = "receiving"  # the current revision is open: waiting for a quiet period
    SEALED = "sealed"  # the current revision is complete; its ready record is being published
    PUBLISHED = "published"  # the current revision was acknowledged on imaging.study.ready
    FAILED = "failed"  # the current revision cannot be emitted (e.g. too large); see `failure`
    CONFLICT = "conflict"  # instances of more than one patient: held until consistent or resolved


class PatientInfo(msgspec.Struct, frozen=True, gc=False):
    """The study's patient (PHI: never logged). Also the ready record's ``patient``, so typed as it is decoded."""

    id: Text = ""
    issuer: Text = ""
    name: Text = ""
    birth_date: ShortText = ""
    sex: ShortText = ""
    issuer_universal: Text = ""
    issuer_universal_type: ShortText = ""
    calling_ae: ShortText = ""  # whose AE title maps to an identifier system when no issuer is sent


class PatientSeen(msgspec.Struct, frozen=True, gc=False):
    """One patient identity among a study's instances: its key, latest demographics and instance count."""

    key: str
    patient: PatientInfo
    instances: int = 0
    seen_at: float = 0.0  # event time of the latest instance whose demographics ``patient`` holds


class StudyInfo(msgspec.Struct, frozen=True, gc=False):
    """Study-level attributes. Also the ready record's ``study``."""

    uid: Uid
    date: ShortText = ""
    time: ShortText = ""
    timezone_offset: ShortText = ""
    description: Text = ""
    accession_number: Text = ""
    accession_issuer: Text = ""
    referring_physician: Text = ""
    procedure_codes: Codes = ()
    institution: Text = ""
    study_id: Text = ""
    accession_issuer_universal: Text = ""
    accession_issuer_universal_type: ShortText = ""
    reading_physicians: Text = ""
    reason_codes: Codes = ()
    reason_text: Text = ""
    placer_order_number: Text = ""
    placer_order_issuer: Text = ""
    placer_order_issuer_universal: Text = ""
    placer_order_issuer_universal_type: ShortText = ""
    department: Text = ""


class SeriesInfo(msgspec.Struct, frozen=True, gc=False):
    uid: str
    number: int | None = None
    modality: str = ""
    description: str = ""
    date: str = ""
    time: str = ""
    body_part: str = ""
    laterality: str = ""
    performing_physician: str = ""
    operators_name: str = ""
    manufacturer: str = ""
    model: str = ""
    institution: str = ""
    first_offset: int = -1  # imaging.raw offset of the record that created the row (-1: before offsets were kept)
    anatomic_regions: Codes = ()
    # ImageLaterality values of the series' images, "" for an image without: labels the series only when one.
    image_lateralities: tuple[str, ...] = ()
    attributes_at: float = 0.0  # event time of the latest instance whose attributes the row holds


class InstanceInfo(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """One row per SOP Instance UID; positional on the wire: instances are the bulk of the state."""

    uid: str
    series_uid: str
    sop_class_uid: str
    number: int | None = None
    title: str = ""
    sha256: str = ""
    revision: int = 0  # the revision this content joined
    first_offset: int = -1  # imaging.raw offset of the record that created the row
    source_offset: int = -1  # imaging.raw offset of the record that last wrote it
    placed_at_ns: int = 0  # when the receiver placed this version's file (0: unknown)
    patient_key: str = ""  # identity_key of this version's patient ("": a row of state schema 2)
    # An IOCM rejection note (domain.rejection): its code, and the instances of the study it names. The
    # note's revision leaves them out from then on; the note itself is never listed.
    rejection_code: str = ""
    rejects: tuple[str, ...] = ()

    def same_content(self, other: InstanceInfo) -> bool:
        # A schema-2 row knows no patient key; its bytes' hash covers the patient attributes anyway.
        if self.patient_key != other.patient_key and self.patient_key and other.patient_key:
            return False
        return (self.uid, self.series_uid, self.sop_class_uid, self.number, self.title, self.sha256) == (
            other.uid,
            other.series_uid,
            other.sop_class_uid,
            other.number,
            other.title,
            other.sha256,
        )


class StudyHeader(msgspec.Struct, frozen=True, gc=False):
    study: StudyInfo
    patient: PatientInfo
    status: StudyStatus = StudyStatus.RECEIVING
    revision: int = 1
    published_revision: int = 0
    instance_count: int = 0
    series_count: int = 0
    first_received: str = ""  # ISO 8601 UTC, event time of the earliest instance
    last_received: str = ""  # ISO 8601 UTC, event time of the latest instance
    last_event_time: float = 0.0  # epoch seconds: when the last new instance was received (event time)
    last_wall_time: float = 0.0  # epoch seconds: when the aggregator processed the last new instance
    partition: int = 0  # partition of imaging.raw (and of every table) holding this study
    commitment_requested: bool = False  # Storage Commitment covering the study: ready without waiting
    commitment_signal: str = "commitment"  # what named the instances: "commitment", or "stow" (a STOW-RS request)
    commitment_waiting: tuple[str, ...] = ()  # instances a commitment request named, not seen yet
    commitment_transaction: str = ""  # the commitment request arriving in parts, and the parts read of it
    commitment_parts_seen: tuple[int, ...] = ()
    commitment_parts_left: int = 0  # parts of that request not read yet: not committed before they are
    failure: str = ""
    applied_offset: int = -1  # imaging.raw offset of the last record applied to this header
    sealed_at: str = ""  # ISO 8601 UTC: when the current revision was sealed (its ready record's ready_at)
    schema_version: int = STATE_SCHEMA_VERSION
    patient_key: str = ""  # identity_key of ``patient``
    patients: tuple[PatientSeen, ...] = ()  # every identity with instances in the study (more than one: conflict)
    resolved_keys: tuple[str, ...] = ()  # identities an operator's resolution covered ...
    resolved_key: str = ""  # ... and the one it chose
    attributes_at: float = 0.0  # event time of the latest instance whose study attributes ``study`` holds
    ready_now: bool = False  # a resolution decided the open revision: ready without a quiet period
    # Schema 4. Who sent the study's instances (the completeness rules' input; at most MAX_SOURCES pairs,
    # ``sources_overflow`` when more came), and the signal that completed the current revision.
    sources: tuple[Source, ...] = ()
    sources_overflow: bool = False
    completed_by: CompletedBy = CompletedBy.NOT_YET
    # The latest Modality Performed Procedure Step of the study that ended (COMPLETED or DISCONTINUED; the
    # reason's code value and meaning when DISCONTINUED). A COMPLETED step names instances: ``mpps_waiting``
    # those not seen yet (the quiet period waits for them until ``mpps_hold_until``, wall clock), then
    # ``mpps_completed`` (the open revision is ready at once).
    mpps_uid: str = ""
    mpps_status: str = ""
    mpps_reason_code: str = ""
    mpps_reason_meaning: str = ""
    mpps_waiting: tuple[str, ...] = ()
    mpps_completed: bool = False
    mpps_hold_until: float = 0.0
    # Early registration (fhir_early_registration): when the first instance was processed (wall clock)
    # and when the study's first revision was announced to FHIR as ``registered`` (ISO 8601 UTC).
    first_wall_time: float = 0.0
    registered_at: str = ""
    rejection_codes: tuple[str, ...] = ()  # of the IOCM rejection notes received in the study (web view)


class Arrival(msgspec.Struct, frozen=True, gc=False):
    """When and where the aggregator saw an event: clocks are epoch seconds, ``offset`` its imaging.raw offset."""

    wall_time: float
    event_time: float
    partition: int
    offset: int = 0


class StudyUpdate(msgspec.Struct, frozen=True, gc=False):
    """What :func:`apply_instance` decided; ``None`` fields need no write."""

    header: StudyHeader
    instance: InstanceInfo | None = None
    series: SeriesInfo | None = None
    changed: bool = False
    opened_revision: bool = False  # the study became RECEIVING: it needs a completeness check


# --- Building blocks from an event ---------------------------------------------------------------


def patient_from_event(event: InstanceEvent) -> PatientInfo:
    return PatientInfo(
        id=event.patient_id,
        issuer=event.issuer_of_patient_id,
        name=event.patient_name,
        birth_date=event.birth_date,
        sex=event.sex,
        issuer_universal=event.patient_issuer_universal,
        issuer_universal_type=event.patient_issuer_universal_type,
        calling_ae=event.calling_ae,
    )


def patient_key_of(patient: PatientInfo, study_uid: str, options: IdentityOptions) -> str:
    """The identity key of a patient as a study records it (:mod:`domain.patient`)."""
    system, value = patient_identity(
        patient.id,
        patient.issuer,
        patient.issuer_universal,
        patient.issuer_universal_type,
        patient.calling_ae,
        study_uid,
        options,
    )
    return identity_key(system, value)


def study_from_event(event: InstanceEvent) -> StudyInfo:
    return StudyInfo(
        uid=event.study_uid,
        date=event.study_date,
        time=event.study_time,
        timezone_offset=event.timezone_offset,
        description=event.study_description,
        accession_number=event.accession_number,
        accession_issuer=event.accession_issuer,
        referring_physician=event.referring_physician,
        procedure_codes=tuple(event.procedure_codes),
        institution=event.institution,
        study_id=event.study_id,
        accession_issuer_universal=event.accession_issuer_universal,
        accession_issuer_universal_type=event.accession_issuer_universal_type,
        reading_physicians=event.reading_physicians,
        reason_codes=tuple(event.reason_codes),
        reason_text=event.reason_text,
        placer_order_number=event.placer_order_number,
        placer_order_issuer=event.placer_order_issuer,
        placer_order_issuer_universal=event.placer_order_issuer_universal,
        placer_order_issuer_universal_type=event.placer_order_issuer_universal_type,
        department=event.department,
    )


def series_from_event(event: InstanceEvent, first_offset: int = -1, event_time: float = 0.0) -> SeriesInfo:
    return SeriesInfo(
        uid=event.series_uid,
        number=event.series_number,
        modality=event.modality,
        description=event.series_description,
        date=event.series_date,
        time=event.series_time,
        body_part=event.body_part_examined,
        laterality=event.laterality,
        performing_physician=event.performing_physician,
        operators_name=event.operators_name,
        manufacturer=event.manufacturer,
        model=event.model,
        institution=event.institution,
        first_offset=first_offset,
        anatomic_regions=tuple(event.anatomic_regions),
        image_lateralities=(event.image_laterality,),
        attributes_at=event_time,
    )


def instance_from_event(
    event: InstanceEvent, revision: int = 0, first_offset: int = -1, patient_key: str = ""
) -> InstanceInfo:
    return InstanceInfo(
        uid=event.sop_instance_uid,
        series_uid=event.series_uid,
        sop_class_uid=event.sop_class_uid,
        number=event.instance_number,
        title=event.instance_title,
        sha256=event.sha256,
        revision=revision,
        first_offset=first_offset,
        placed_at_ns=event.placed_at_ns,
        patient_key=patient_key,
        rejection_code=event.rejection_code,
        rejects=event.rejected_uids,
    )


_EMPTY = ("", None, ())

# The fields of each info that instances report, in the order the *_from_event functions fill them.
# Identity (``uid``) never changes; every other field follows the latest instance (merge_latest).
_MERGED_FIELDS: dict[type, tuple[str, ...]] = {
    PatientInfo: tuple(f for f in PatientInfo.__struct_fields__),
    StudyInfo: tuple(f for f in StudyInfo.__struct_fields__ if f != "uid"),
    SeriesInfo: tuple(
        f
        for f in SeriesInfo.__struct_fields__
        if f not in ("uid", "first_offset", "image_lateralities", "attributes_at")
    ),
}


def merge_latest(known: _T, incoming: _T, newer: bool) -> _T:
    """``known`` updated from ``incoming``: every non-empty value of a ``newer`` instance wins, and an
    older instance (an event read out of order) only fills what is empty.

    Latest-wins is what makes a correction reach FHIR: a modality (or a PACS) re-sending a study with
    a corrected description or patient name. Empty values never erase: instances of other kinds (a
    dose report, a key object) routinely leave study attributes out. Returns ``known`` itself when
    nothing changes.
    """
    updates: dict[str, Any] = {}
    for name in _MERGED_FIELDS[type(known)]:
        value = getattr(incoming, name)
        if value in _EMPTY:
            continue
        current = getattr(known, name)
        if current != value and (newer or current in _EMPTY):
            updates[name] = value
    return _replace(known, **updates) if updates else known


def merge_series(known: SeriesInfo, event: InstanceEvent, event_time: float) -> SeriesInfo:
    """A series row after one more of its instances: latest attributes, and the image's laterality noted."""
    merged = merge_latest(known, series_from_event(event), newer=event_time >= known.attributes_at)
    updates: dict[str, Any] = {}
    if event_time > merged.attributes_at:
        updates["attributes_at"] = event_time
    if event.image_laterality not in merged.image_lateralities:
        updates["image_lateralities"] = tuple(sorted({*merged.image_lateralities, event.image_laterality}))
    return _replace(merged, **updates) if updates else merged


def event_time_of(event: InstanceEvent, message_timestamp: float | None, fallback: float) -> float:
    """When the instance was received: ``received_at`` if parseable, else the Kafka timestamp, else ``fallback``."""
    if event.received_at:
        try:
            parsed = datetime.fromisoformat(event.received_at.replace("Z", "+00:00"))
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
        except (ValueError, OverflowError, OSError):
            pass
    return message_timestamp if message_timestamp else fallback


def iso_utc(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- Storage encoding (table values) -------------------------------------------------------------

_encoder = msgspec.json.Encoder()
_header_decoder = msgspec.json.Decoder(StudyHeader)
_series_decoder = msgspec.json.Decoder(SeriesInfo)
_instance_decoder = msgspec.json.Decoder(InstanceInfo)


def _decode(decoder: msgspec.json.Decoder[_T], raw: bytes, what: str) -> _T:
    try:
        return decoder.decode(raw)
    except msgspec.MsgspecError as exc:
        raise InvalidRecordError(f"corrupt {what}: {exc}", reason="corrupt_state") from None


def encode_header(header: StudyHeader) -> bytes:
    return _encoder.encode(header)


def decode_header(raw: bytes) -> StudyHeader:
    return _decode(_header_decoder, raw, "study header")


def encode_series(series: SeriesInfo) -> bytes:
    return _encoder.encode(series)


def decode_series(raw: bytes) -> SeriesInfo:
    return _decode(_series_decoder, raw, "series state")


def encode_instance(instance: InstanceInfo) -> bytes:
    return _encoder.encode(instance)


def decode_instance(raw: bytes) -> InstanceInfo:
    return _decode(_instance_decoder, raw, "instance state")


# --- Table keys ----------------------------------------------------------------------------------
# '|' never occurs in a UID (digits and dots), so "<study>|" is an exact prefix of one study's rows.


def study_key(study_uid: str) -> bytes:
    return study_uid.encode("ascii")


def study_uid_of_key(key: bytes) -> str | None:
    """The study UID a table key names, or ``None`` when the key is not one (a row written by hand, say)."""
    try:
        text = key.decode("ascii")
    except UnicodeDecodeError:
        return None
    return text if is_valid_uid(text) else None


def child_prefix(study_uid: str) -> bytes:
    return f"{study_uid}|".encode("ascii")


def child_key(study_uid: str, child_uid: str) -> bytes:
    return f"{study_uid}|{child_uid}".encode("ascii")
