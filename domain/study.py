"""Per-study aggregation state and the pure rules that advance it (no Faust, no I/O).

The state of one study is split so that a new instance never rewrites the whole study:

- one small :class:`StudyHeader` per study (patient, study attributes, counts, clocks, status, revision),
- one :class:`SeriesInfo` per series, written when the series first appears or gains an attribute,
- one :class:`InstanceInfo` per SOP Instance UID (the de-duplication key).

:func:`apply_instance` takes what is stored for the event's study, series and instance and returns
what must be written back; :func:`is_ready` decides completeness; :func:`mark_sealed` and
:func:`mark_published` record the decision. Revisions: a study starts at revision 1; any new or
changed instance after a revision was sealed opens revision + 1, ready after another quiet period.

Replaying a batch is harmless by construction. The header remembers the imaging.raw offset of the
last record applied to it (``applied_offset``) and every row the offset that created it
(``first_offset``): a row counts as known to the header only when it was created at or below that
offset. A batch whose writes reached the changelog only in part (a worker killed while they were in
flight) is therefore applied again exactly: rows written without their header are counted, records
the header already reflects only repair rows that went missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

import msgspec

from domain.errors import InvalidRecordError
from domain.events import Codes, CommitmentRequest, InstanceEvent, ShortText, Text, Uid
from domain.uids import is_valid_uid

STATE_SCHEMA_VERSION = 2


class StudyStatus(StrEnum):
    RECEIVING = "receiving"  # the current revision is open: waiting for a quiet period
    SEALED = "sealed"  # the current revision is complete; its ready record is being published
    PUBLISHED = "published"  # the current revision was acknowledged on imaging.study.ready
    FAILED = "failed"  # the current revision cannot be emitted (e.g. too large); see `failure`


class PatientInfo(msgspec.Struct, frozen=True, gc=False):
    """The study's patient (PHI: never logged). Also the ready record's ``patient``, so typed as it is decoded."""

    id: Text = ""
    issuer: Text = ""
    name: Text = ""
    birth_date: ShortText = ""
    sex: ShortText = ""


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

    def same_content(self, other: InstanceInfo) -> bool:
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
    commitment_waiting: tuple[str, ...] = ()  # instances a commitment request named, not seen yet
    commitment_transaction: str = ""  # the commitment request arriving in parts, and the parts read of it
    commitment_parts_seen: tuple[int, ...] = ()
    commitment_parts_left: int = 0  # parts of that request not read yet: not committed before they are
    failure: str = ""
    applied_offset: int = -1  # imaging.raw offset of the last record applied to this header
    sealed_at: str = ""  # ISO 8601 UTC: when the current revision was sealed (its ready record's ready_at)
    schema_version: int = STATE_SCHEMA_VERSION


class Reception(msgspec.Struct, frozen=True, gc=False):
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


_T = TypeVar("_T", bound=msgspec.Struct)
_replace = msgspec.structs.replace


def check_key(record: InstanceEvent | CommitmentRequest, key: bytes | None) -> None:
    """Reject a record whose Kafka key is not its study: the study's records would be on two partitions."""
    if key is None or key != record.study_uid.encode("ascii"):
        raise InvalidRecordError("message key differs from study_uid", reason="key_mismatch")


# --- Building blocks from an event ---------------------------------------------------------------


def patient_from_event(event: InstanceEvent) -> PatientInfo:
    return PatientInfo(
        id=event.patient_id,
        issuer=event.issuer_of_patient_id,
        name=event.patient_name,
        birth_date=event.birth_date,
        sex=event.sex,
    )


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
    )


def series_from_event(event: InstanceEvent, first_offset: int = -1) -> SeriesInfo:
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
    )


def instance_from_event(event: InstanceEvent, revision: int = 0, first_offset: int = -1) -> InstanceInfo:
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
    )


_EMPTY = ("", None, ())

# Where each field of the infos built from an event comes from (as in the *_from_event functions above).
_EVENT_SOURCES: dict[type, dict[str, str]] = {
    PatientInfo: {
        "id": "patient_id",
        "issuer": "issuer_of_patient_id",
        "name": "patient_name",
        "birth_date": "birth_date",
        "sex": "sex",
    },
    StudyInfo: {
        "uid": "study_uid",
        "date": "study_date",
        "time": "study_time",
        "timezone_offset": "timezone_offset",
        "description": "study_description",
        "accession_number": "accession_number",
        "accession_issuer": "accession_issuer",
        "referring_physician": "referring_physician",
        "procedure_codes": "procedure_codes",
        "institution": "institution",
        "study_id": "study_id",
    },
    SeriesInfo: {
        "uid": "series_uid",
        "number": "series_number",
        "modality": "modality",
        "description": "series_description",
        "date": "series_date",
        "time": "series_time",
        "body_part": "body_part_examined",
        "laterality": "laterality",
        "performing_physician": "performing_physician",
        "operators_name": "operators_name",
        "manufacturer": "manufacturer",
        "model": "model",
        "institution": "institution",
    },
}


def fill_blanks(known: _T, incoming: _T) -> _T:
    """``known`` with its empty fields taken from ``incoming``: the first non-empty value wins.

    Later instances never overwrite what an earlier one said, so a study's attributes do not flap.
    """
    updates = {
        name: value
        for name in _EVENT_SOURCES[type(known)]
        if getattr(known, name) in _EMPTY and (value := getattr(incoming, name)) not in _EMPTY
    }
    return _replace(known, **updates) if updates else known


def fill_blanks_from_event(known: _T, event: InstanceEvent) -> _T:
    """``fill_blanks(known, <info>_from_event(event))`` that reads only the event fields ``known`` lacks.

    The aggregator's hot path: most events fill nothing. Returns ``known`` itself when nothing changes.
    """
    updates: dict[str, Any] = {}
    for name, attribute in _EVENT_SOURCES[type(known)].items():
        if getattr(known, name) in _EMPTY:
            value = getattr(event, attribute)
            if value not in _EMPTY:
                updates[name] = value
    return _replace(known, **updates) if updates else known


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


# --- Rules ---------------------------------------------------------------------------------------


def _counted(header: StudyHeader | None, first_offset: int) -> bool:
    """Whether a row created at ``first_offset`` is reflected in ``header`` (see the module doc)."""
    return header is not None and first_offset <= header.applied_offset


def apply_instance(
    header: StudyHeader | None,
    known_series: SeriesInfo | None,
    known_instance: InstanceInfo | None,
    event: InstanceEvent,
    at: Reception,
) -> StudyUpdate:
    """Apply one instance event to what is stored for its study, series and SOP Instance UID.

    A repeated SOP Instance UID with the same content changes nothing (at-least-once delivery and
    modality re-sends are harmless). Different content under a known UID (a replaced instance) changes
    the study without counting it twice.
    """
    if header is not None and at.offset <= header.applied_offset:
        return _repair(header, known_series, known_instance, event, at)
    incoming = instance_from_event(event)
    if header is not None and placed_before(incoming, known_instance):
        return StudyUpdate(header=header)
    counted = known_instance if known_instance is not None and _counted(header, known_instance.first_offset) else None
    if (
        counted is not None
        and header is not None
        and counted.source_offset <= header.applied_offset  # the header reflects the row's last write
        and counted.same_content(incoming)
    ):
        return StudyUpdate(header=header)

    series_counted = known_series is not None and _counted(header, known_series.first_offset)
    if known_series is not None:
        merged_series = fill_blanks_from_event(known_series, event)
        series_to_write = merged_series if merged_series is not known_series else None
    else:
        series_to_write = series_from_event(event, first_offset=at.offset)

    received = iso_utc(at.event_time)  # one conversion per event: it is a tenth of this function
    if header is None:
        header = StudyHeader(
            study=study_from_event(event),
            patient=patient_from_event(event),
            first_received=received,
            partition=at.partition,
        )
        opened = True
        changes: dict[str, Any] = {}
    else:
        changes = {
            "study": fill_blanks_from_event(header.study, event),
            "patient": fill_blanks_from_event(header.patient, event),
        }
        opened = header.status is not StudyStatus.RECEIVING
        if opened:  # a sealed (or failed) revision is final: anything new opens the next one
            changes.update(_next_revision(header))
        elif header.commitment_waiting and incoming.uid in header.commitment_waiting:
            # The last instance a commitment request was waiting for makes the study committed.
            waiting = tuple(uid for uid in header.commitment_waiting if uid != incoming.uid)
            changes.update(
                commitment_waiting=waiting, commitment_requested=not waiting and not header.commitment_parts_left
            )

    first_received = header.first_received
    if not first_received or received < first_received:
        first_received = received
    if at.event_time >= header.last_event_time:
        last_event_time, last_received = at.event_time, received
    else:
        last_event_time, last_received = header.last_event_time, iso_utc(header.last_event_time)  # out of order
    header = _replace(
        header,
        instance_count=header.instance_count + (0 if counted is not None else 1),
        series_count=header.series_count + (0 if series_counted else 1),
        first_received=first_received,
        last_received=last_received,
        last_event_time=last_event_time,
        last_wall_time=max(header.last_wall_time, at.wall_time),
        partition=at.partition,
        applied_offset=at.offset,
        **changes,
    )
    instance = _replace(
        incoming,
        revision=header.revision,
        first_offset=counted.first_offset if counted is not None else at.offset,
        source_offset=at.offset,
    )
    return StudyUpdate(header=header, instance=instance, series=series_to_write, changed=True, opened_revision=opened)


def placed_before(incoming: InstanceInfo, known: InstanceInfo | None) -> bool:
    """Whether ``incoming`` is a version of a file that a later placement replaced (its event came late).

    Two versions of one SOP Instance UID stored at the same moment (two associations, two processes)
    may publish their events in either order; the one placed last is the one on disk.
    """
    return (
        known is not None
        and incoming.placed_at_ns > 0
        and known.placed_at_ns > incoming.placed_at_ns
        and not known.same_content(incoming)
    )


def _next_revision(header: StudyHeader) -> dict[str, Any]:
    return {
        "status": StudyStatus.RECEIVING,
        "revision": header.revision + 1,
        "commitment_requested": False,
        "commitment_waiting": (),
        "commitment_transaction": "",
        "commitment_parts_seen": (),
        "commitment_parts_left": 0,
        "failure": "",
        "sealed_at": "",
    }


def _repair(
    header: StudyHeader,
    known_series: SeriesInfo | None,
    known_instance: InstanceInfo | None,
    event: InstanceEvent,
    at: Reception,
) -> StudyUpdate:
    """A record the header already reflects: write back its rows if they went missing, count nothing.

    Rows go missing when a worker died while a batch's changelog records were in flight (the header
    arrived, a row did not), or when local state was damaged and the input is re-read. A row that is
    restored after its revision was sealed opens the next revision, so the instance reaches FHIR.
    """
    incoming = instance_from_event(event)
    if placed_before(incoming, known_instance):
        return StudyUpdate(header=header)
    missing = known_instance is None
    stale = (
        known_instance is not None
        and 0 <= known_instance.source_offset < at.offset
        and not known_instance.same_content(incoming)
    )
    series_to_write = series_from_event(event, first_offset=at.offset) if known_series is None else None
    if not missing and not stale and series_to_write is None:
        return StudyUpdate(header=header)
    opened = header.status is not StudyStatus.RECEIVING
    if opened:
        header = _replace(header, last_wall_time=max(header.last_wall_time, at.wall_time), **_next_revision(header))
    instance = None
    if missing or stale:
        instance = _replace(
            incoming,
            revision=header.revision,
            first_offset=at.offset if known_instance is None else known_instance.first_offset,
            source_offset=at.offset,
        )
    return StudyUpdate(header=header, instance=instance, series=series_to_write, changed=True, opened_revision=opened)


def request_commitment(
    header: StudyHeader,
    missing: Sequence[str] = (),
    offset: int | None = None,
    transaction: str = "",
    part: int = 1,
    parts: int = 1,
) -> StudyHeader:
    """A Storage Commitment request covering the study's open revision makes it ready at once.

    ``missing`` are the instances it names that the study does not hold yet (stored by another receiving
    process, read later): the study is committed when the last of them arrives (:func:`apply_instance`).
    A request too large for one message comes in ``parts``: committed only once every part was read.
    ``offset`` is the request's imaging.raw offset: a request the header already reflects changes nothing.
    """
    if offset is not None and offset <= header.applied_offset:
        return header
    applied: dict[str, Any] = {"applied_offset": offset} if offset is not None else {}
    if header.status is not StudyStatus.RECEIVING:
        return _replace(header, **applied) if applied else header
    seen: tuple[int, ...] = ()
    if parts > 1:
        known = header.commitment_parts_seen if header.commitment_transaction == transaction else ()
        seen = tuple(sorted({*known, part}))
    parts_left = max(0, parts - len(seen)) if parts > 1 else 0
    waiting = tuple(dict.fromkeys((*header.commitment_waiting, *missing)))
    return _replace(
        header,
        commitment_waiting=waiting,
        commitment_requested=not waiting and not parts_left,
        commitment_transaction=transaction if parts > 1 else header.commitment_transaction,
        commitment_parts_seen=seen,
        commitment_parts_left=parts_left,
        **applied,
    )


def is_ready(header: StudyHeader, now_wall: float, now_event_time: float | None, quiet_period: float) -> bool:
    """Whether the open revision of a study is complete.

    Quiet time is judged on both clocks: the wall clock (no new instance processed for ``quiet_period``)
    and event time (``now_event_time`` is how far the input has progressed: the wall clock when the
    aggregator is caught up, else the newest event time it has read). During catch-up after downtime
    instances received seconds apart are processed a long wall-clock time apart, or the other way
    round; requiring both keeps a study from being cut early. ``None`` means event time is unknown.
    """
    if header.status is not StudyStatus.RECEIVING or header.instance_count == 0:
        return False
    if header.commitment_requested:
        return True
    if now_event_time is None:
        return False
    return now_wall - header.last_wall_time >= quiet_period and now_event_time - header.last_event_time >= quiet_period


def needs_check(header: StudyHeader, now_wall: float, quiet_period: float) -> bool:
    """Cheap pre-check for the completeness timer: worth asking the agent to decide.

    A sealed revision always is: its ready record was not acknowledged yet (a worker stopped in between).
    """
    if header.status is StudyStatus.SEALED:
        return True
    return header.status is StudyStatus.RECEIVING and (
        header.commitment_requested or now_wall - header.last_wall_time >= quiet_period
    )


def mark_sealed(header: StudyHeader, sealed_at: str) -> StudyHeader:
    """The open revision is complete: from now on a new instance opens the next one."""
    return _replace(header, status=StudyStatus.SEALED, sealed_at=sealed_at)


def mark_published(header: StudyHeader) -> StudyHeader:
    return _replace(header, status=StudyStatus.PUBLISHED, published_revision=header.revision)


def mark_failed(header: StudyHeader, reason: str) -> StudyHeader:
    return _replace(header, status=StudyStatus.FAILED, failure=reason)


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
