"""Per-study aggregation state and the pure rules that advance it (no Faust, no I/O).

The state of one study is split so that a new instance never rewrites the whole study:

- one small :class:`StudyHeader` per study (patient, study attributes, counts, clocks, status, revision),
- one :class:`SeriesInfo` per series, written when the series first appears or gains an attribute,
- one :class:`InstanceInfo` per SOP Instance UID (the de-duplication key).

:func:`apply_instance` takes what is stored for the event's study, series and instance and returns
what must be written back; :func:`is_ready` decides completeness; :func:`mark_published` records that
a revision was emitted. Revisions: a study starts at revision 1; any new or changed instance after a
revision was published opens revision + 1, which becomes ready after another quiet period.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache
from typing import Any, TypeVar

import orjson

from domain.errors import InvalidEventError
from domain.events import CodedValue, CommitmentRequest, InstanceEvent

STATE_SCHEMA_VERSION = 1
UID_CHARACTERS = frozenset("0123456789.")
UID_MAX_LENGTH = 64


class StudyStatus(StrEnum):
    RECEIVING = "receiving"  # the current revision is open: waiting for a quiet period
    PUBLISHED = "published"  # the current revision was emitted on imaging.study.ready
    FAILED = "failed"  # the current revision cannot be emitted (e.g. too large); see `failure`


@dataclass(frozen=True, slots=True)
class PatientInfo:
    id: str = ""
    issuer: str = ""
    name: str = ""
    birth_date: str = ""
    sex: str = ""


@dataclass(frozen=True, slots=True)
class StudyInfo:
    uid: str
    date: str = ""
    time: str = ""
    timezone_offset: str = ""
    description: str = ""
    accession_number: str = ""
    accession_issuer: str = ""
    referring_physician: str = ""
    procedure_codes: tuple[CodedValue, ...] = ()
    institution: str = ""
    study_id: str = ""


@dataclass(frozen=True, slots=True)
class SeriesInfo:
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


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    uid: str
    series_uid: str
    sop_class_uid: str
    number: int | None = None
    title: str = ""
    sha256: str = ""


@dataclass(frozen=True, slots=True)
class StudyHeader:
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
    failure: str = ""
    schema_version: int = STATE_SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class Reception:
    """When and where the aggregator saw an event: clocks are epoch seconds."""

    wall_time: float
    event_time: float
    partition: int


@dataclass(frozen=True, slots=True)
class StudyUpdate:
    """What :func:`apply_instance` decided; ``None`` fields need no write."""

    header: StudyHeader
    instance: InstanceInfo | None = None
    series: SeriesInfo | None = None
    changed: bool = False
    opened_revision: bool = False  # the study became RECEIVING: it needs a completeness check


_Info = TypeVar("_Info", PatientInfo, StudyInfo, SeriesInfo)
_T = TypeVar("_T")


def check_event_uids(event: InstanceEvent, *, study_key_uid: str | None) -> None:
    """Reject an event whose UIDs cannot be table keys, or whose Kafka key is not its study.

    UIDs are digits and dots, at most 64 characters (DICOM PS3.5 9.1); anything else would break the
    ``study|child`` key scheme. A key that differs from the StudyInstanceUID would put the study's
    instances on two partitions.
    """
    for name in ("study_uid", "series_uid", "sop_instance_uid"):
        value = getattr(event, name)
        if len(value) > UID_MAX_LENGTH or not set(value) <= UID_CHARACTERS:
            raise InvalidEventError(f"{name} is not a DICOM UID")
    if study_key_uid is not None and study_key_uid != event.study_uid:
        raise InvalidEventError("message key differs from study_uid")


def check_commitment_uids(request: CommitmentRequest, *, study_key_uid: str | None) -> None:
    """Reject a commitment record whose UIDs cannot be table keys, or whose Kafka key is not its study."""
    for value in (request.study_uid, *request.sop_instance_uids):
        if len(value) > UID_MAX_LENGTH or not set(value) <= UID_CHARACTERS:
            raise InvalidEventError("storage_commitment names something that is not a DICOM UID")
    if study_key_uid is not None and study_key_uid != request.study_uid:
        raise InvalidEventError("message key differs from study_uid")


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


def series_from_event(event: InstanceEvent) -> SeriesInfo:
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
    )


def instance_from_event(event: InstanceEvent) -> InstanceInfo:
    return InstanceInfo(
        uid=event.sop_instance_uid,
        series_uid=event.series_uid,
        sop_class_uid=event.sop_class_uid,
        number=event.instance_number,
        title=event.instance_title,
        sha256=event.sha256,
    )


_EMPTY = ("", None, ())


@cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _replace(obj: _T, **changes: Any) -> _T:
    """``dataclasses.replace`` for these init-only dataclasses, without its per-call field introspection.

    Called twice per instance event on the aggregator's hot path, where ``dataclasses.replace`` was a
    tenth of the domain's CPU time.
    """
    values = {name: getattr(obj, name) for name in _field_names(type(obj))}
    values.update(changes)
    return type(obj)(**values)


def fill_blanks(known: _Info, incoming: _Info) -> _Info:
    """``known`` with its empty fields taken from ``incoming``: the first non-empty value wins.

    Later instances never overwrite what an earlier one said, so a study's attributes do not flap.
    """
    updates = {
        name: value
        for name in _field_names(type(known))
        if getattr(known, name) in _EMPTY and (value := getattr(incoming, name)) not in _EMPTY
    }
    return _replace(known, **updates) if updates else known


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


def fill_blanks_from_event(known: _Info, event: InstanceEvent) -> _Info:
    """``fill_blanks(known, <info>_from_event(event))`` that reads only the event fields ``known`` lacks.

    The aggregator's hot path: most events fill nothing, and building three infos per event to learn
    that was a third of :func:`apply_instance`. Returns ``known`` itself when nothing changes.
    """
    updates: dict[str, Any] = {}
    for name, attribute in _EVENT_SOURCES[type(known)].items():
        if getattr(known, name) in _EMPTY:
            value = getattr(event, attribute)
            if name == "procedure_codes":
                value = tuple(value)
            if value not in _EMPTY:
                updates[name] = value
    return _replace(known, **updates) if updates else known


def event_time_of(event: InstanceEvent, message_timestamp: float | None, fallback: float) -> float:
    """When the instance was received: ``received_at`` if parseable, else the Kafka timestamp, else ``fallback``."""
    if event.received_at:
        try:
            parsed = datetime.fromisoformat(event.received_at.replace("Z", "+00:00"))
        except ValueError:
            parsed = None
        if parsed is not None:
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    return message_timestamp if message_timestamp else fallback


def iso_utc(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- Rules ---------------------------------------------------------------------------------------


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
    instance = instance_from_event(event)
    if header is not None and known_instance == instance:
        return StudyUpdate(header=header)
    is_new_instance = known_instance is None

    if known_series is not None:
        merged_series = fill_blanks_from_event(known_series, event)
        series_to_write = merged_series if merged_series is not known_series else None
    else:
        series_to_write = series_from_event(event)

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
        if opened:  # a published (or failed) revision is final: anything new opens the next one
            changes.update(
                status=StudyStatus.RECEIVING,
                revision=header.revision + 1,
                commitment_requested=False,
                commitment_waiting=(),
                failure="",
            )
        elif header.commitment_waiting and instance.uid in header.commitment_waiting:
            # The last instance a commitment request was waiting for makes the study committed.
            waiting = tuple(uid for uid in header.commitment_waiting if uid != instance.uid)
            changes.update(commitment_waiting=waiting, commitment_requested=not waiting)

    first_received = header.first_received
    if not first_received or received < first_received:
        first_received = received
    if at.event_time >= header.last_event_time:
        last_event_time, last_received = at.event_time, received
    else:
        last_event_time, last_received = header.last_event_time, iso_utc(header.last_event_time)  # out of order
    header = _replace(
        header,
        instance_count=header.instance_count + (1 if is_new_instance else 0),
        series_count=header.series_count + (1 if known_series is None else 0),
        first_received=first_received,
        last_received=last_received,
        last_event_time=last_event_time,
        last_wall_time=max(header.last_wall_time, at.wall_time),
        partition=at.partition,
        **changes,
    )
    return StudyUpdate(header=header, instance=instance, series=series_to_write, changed=True, opened_revision=opened)


def request_commitment(header: StudyHeader, missing: Sequence[str] = ()) -> StudyHeader:
    """A Storage Commitment request covering the study's open revision makes it ready at once.

    ``missing`` are the instances it names that the study does not hold yet (stored by another receiving
    process, read later): the study is committed when the last of them arrives (:func:`apply_instance`).
    """
    if header.status is not StudyStatus.RECEIVING:
        return header
    if missing:
        waiting = tuple(dict.fromkeys((*header.commitment_waiting, *missing)))
        return dataclasses.replace(header, commitment_waiting=waiting)
    return dataclasses.replace(header, commitment_requested=True, commitment_waiting=())


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


def wall_quiet_elapsed(header: StudyHeader, now_wall: float, quiet_period: float) -> bool:
    """Cheap pre-check for the completeness timer: worth asking the agent to decide."""
    return header.status is StudyStatus.RECEIVING and (
        header.commitment_requested or now_wall - header.last_wall_time >= quiet_period
    )


def mark_published(header: StudyHeader) -> StudyHeader:
    return dataclasses.replace(header, status=StudyStatus.PUBLISHED, published_revision=header.revision)


def mark_failed(header: StudyHeader, reason: str) -> StudyHeader:
    return dataclasses.replace(header, status=StudyStatus.FAILED, failure=reason)


# --- Storage encoding (table values) -------------------------------------------------------------


def _codes(items: Any) -> tuple[CodedValue, ...]:
    return tuple(CodedValue(**c) for c in items or ())


def encode_header(header: StudyHeader) -> bytes:
    return orjson.dumps(header)  # orjson walks dataclasses natively: ~20 times faster than asdict


def decode_header(raw: bytes) -> StudyHeader:
    try:
        data = orjson.loads(raw)
        study = data.pop("study")
        study["procedure_codes"] = _codes(study.get("procedure_codes"))
        data["commitment_waiting"] = tuple(data.get("commitment_waiting") or ())
        return StudyHeader(
            study=StudyInfo(**study),
            patient=PatientInfo(**data.pop("patient")),
            status=StudyStatus(data.pop("status")),
            **data,
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise InvalidEventError(f"corrupt study header: {exc}") from None


def encode_series(series: SeriesInfo) -> bytes:
    return orjson.dumps(series)


def decode_series(raw: bytes) -> SeriesInfo:
    try:
        return SeriesInfo(**orjson.loads(raw))
    except (orjson.JSONDecodeError, TypeError) as exc:
        raise InvalidEventError(f"corrupt series state: {exc}") from None


# Instances are the bulk of the state: a positional array keeps each value (and changelog record) small.
def encode_instance(instance: InstanceInfo) -> bytes:
    return orjson.dumps(
        [instance.uid, instance.series_uid, instance.sop_class_uid, instance.number, instance.title, instance.sha256]
    )


def decode_instance(raw: bytes) -> InstanceInfo:
    try:
        uid, series_uid, sop_class_uid, number, title, sha256 = orjson.loads(raw)
    except (orjson.JSONDecodeError, ValueError, TypeError) as exc:
        raise InvalidEventError(f"corrupt instance state: {exc}") from None
    return InstanceInfo(uid, series_uid, sop_class_uid, number, title, sha256)


# --- Table keys ----------------------------------------------------------------------------------
# '|' never occurs in a UID (digits and dots), so "<study>|" is an exact prefix of one study's rows.


def study_key(study_uid: str) -> bytes:
    return study_uid.encode("ascii")


def child_prefix(study_uid: str) -> bytes:
    return f"{study_uid}|".encode("ascii")


def child_key(study_uid: str, child_uid: str) -> bytes:
    return f"{study_uid}|{child_uid}".encode("ascii")
