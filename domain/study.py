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
from domain.patient import IdentityOptions, identity_key, patient_identity
from domain.uids import is_valid_uid

STATE_SCHEMA_VERSION = 3  # 3: patient identities (conflicts), latest-wins attributes, image lateralities
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


# --- Patients of a study -------------------------------------------------------------------------


def with_identities(header: StudyHeader, options: IdentityOptions) -> StudyHeader:
    """A header of state schema 2 (no identities recorded) as schema 3: one identity holding every instance."""
    if header.patients or header.instance_count == 0:
        return header
    key = header.patient_key or patient_key_of(header.patient, header.study.uid, options)
    seen = PatientSeen(key, header.patient, header.instance_count, header.last_event_time)
    return _replace(header, patient_key=key, patients=(seen,))


def count_patient(
    patients: tuple[PatientSeen, ...], key: str, incoming: PatientInfo, event_time: float, replaced_key: str | None
) -> tuple[PatientSeen, ...]:
    """The identities after one instance of ``key``: one more instance for it (its demographics merged,
    latest wins), one fewer for ``replaced_key`` when the instance replaced a version of another patient.

    ``replaced_key`` is ``None`` for a new instance; equal to ``key`` for a new version of the same
    patient's instance (no count changes). Identities left without instances are dropped.
    """
    result: list[PatientSeen] = []
    found = False
    for seen in patients:
        if seen.key == key:
            found = True
            seen = _replace(
                seen,
                patient=merge_latest(seen.patient, incoming, newer=event_time >= seen.seen_at),
                instances=seen.instances + (0 if replaced_key == key else 1),
                seen_at=max(seen.seen_at, event_time),
            )
        elif seen.key == replaced_key:
            seen = _replace(seen, instances=seen.instances - 1)
        if seen.instances > 0:
            result.append(seen)
    if not found:
        result.append(PatientSeen(key, incoming, 1, event_time))
    return tuple(result)


def study_patient(
    patients: tuple[PatientSeen, ...], current_key: str, resolved_keys: tuple[str, ...], resolved_key: str
) -> PatientSeen | None:
    """The identity the study is filed under: the only one; the operator's choice when the resolution
    covers every identity present; else (a conflict) the one it had."""
    if not patients:
        return None
    if len(patients) == 1:
        return patients[0]
    if resolved_key and all(p.key in resolved_keys for p in patients):
        return next((p for p in patients if p.key == resolved_key), patients[0])
    return next((p for p in patients if p.key == current_key), patients[0])


def in_conflict(header: StudyHeader) -> bool:
    """Instances of more than one patient, not all covered by an operator's resolution."""
    return len(header.patients) > 1 and not (
        header.resolved_key and all(p.key in header.resolved_keys for p in header.patients)
    )


def _with_patient(
    header: StudyHeader, event: InstanceEvent, key: str, event_time: float, replaced_key: str | None
) -> dict[str, Any]:
    patients = count_patient(header.patients, key, patient_from_event(event), event_time, replaced_key)
    chosen = study_patient(patients, header.patient_key or key, header.resolved_keys, header.resolved_key)
    assert chosen is not None  # count_patient leaves ``key`` with at least this instance
    return {"patients": patients, "patient": chosen.patient, "patient_key": chosen.key}


def resolve_patient(header: StudyHeader, key: str, offset: int) -> StudyHeader | None:
    """An operator's resolution of a conflict: the study is ``key``'s, for the identities present now.

    Opens the next revision, ready at once. ``None`` when ``key`` is not among the study's identities
    (a resolution for another state of the study: an invalid record). A resolution the header already
    reflects (``offset``) changes nothing.
    """
    if offset <= header.applied_offset:
        return header
    if all(p.key != key for p in header.patients):
        return None
    resolved = _replace(
        header,
        resolved_keys=tuple(p.key for p in header.patients),
        resolved_key=key,
        applied_offset=offset,
    )
    chosen = study_patient(resolved.patients, key, resolved.resolved_keys, key)
    assert chosen is not None
    changes: dict[str, Any] = {"patient": chosen.patient, "patient_key": chosen.key, "ready_now": True}
    if header.status is not StudyStatus.RECEIVING:
        changes.update({**_next_revision(header), "ready_now": True})
    return _replace(resolved, **changes)


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
    identity: IdentityOptions = DEFAULT_IDENTITY,
) -> StudyUpdate:
    """Apply one instance event to what is stored for its study, series and SOP Instance UID.

    A repeated SOP Instance UID with the same content changes nothing (at-least-once delivery and
    modality re-sends are harmless). Different content under a known UID (a replaced instance) changes
    the study without counting it twice. The study's attributes and its patient's demographics follow
    the latest instance (:func:`merge_latest`); its patient identities are counted (:func:`count_patient`).
    """
    if header is not None:
        header = with_identities(header, identity)
        if at.offset <= header.applied_offset:
            return _repair(header, known_series, known_instance, event, at, identity)
    key = patient_key_of(patient_from_event(event), event.study_uid, identity)
    incoming = instance_from_event(event, patient_key=key)
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
        merged_series = merge_series(known_series, event, at.event_time)
        series_to_write = merged_series if merged_series is not known_series else None
    else:
        series_to_write = series_from_event(event, first_offset=at.offset, event_time=at.event_time)

    received = iso_utc(at.event_time)  # one conversion per event: it is a tenth of this function
    if header is None:
        header = StudyHeader(
            study=study_from_event(event),
            patient=patient_from_event(event),
            first_received=received,
            partition=at.partition,
            attributes_at=at.event_time,
        )
        opened = True
        changes: dict[str, Any] = {}
    else:
        changes, opened = _changes_for(header, event, incoming, at.event_time)
    replaced_key = (counted.patient_key or header.patient_key) if counted is not None else None
    changes.update(_with_patient(header, event, key, at.event_time, replaced_key))

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


def _changes_for(
    header: StudyHeader, event: InstanceEvent, incoming: InstanceInfo, event_time: float
) -> tuple[dict[str, Any], bool]:
    """What one more instance changes in a known study's header besides counts and clocks; and whether
    it opens a revision."""
    changes: dict[str, Any] = {
        "study": merge_latest(header.study, study_from_event(event), newer=event_time >= header.attributes_at),
        "attributes_at": max(header.attributes_at, event_time),
    }
    opened = header.status is not StudyStatus.RECEIVING
    if opened:  # a sealed (failed, conflicting) revision is final: anything new opens the next one
        changes.update(_next_revision(header))
    elif header.commitment_waiting and incoming.uid in header.commitment_waiting:
        # The last instance a commitment request was waiting for makes the study committed.
        waiting = tuple(uid for uid in header.commitment_waiting if uid != incoming.uid)
        committed = not waiting and not header.commitment_parts_left
        changes.update(commitment_waiting=waiting, commitment_requested=committed)
    return changes, opened


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
        "ready_now": False,
    }


def _repair(
    header: StudyHeader,
    known_series: SeriesInfo | None,
    known_instance: InstanceInfo | None,
    event: InstanceEvent,
    at: Reception,
    identity: IdentityOptions = DEFAULT_IDENTITY,
) -> StudyUpdate:
    """A record the header already reflects: write back its rows if they went missing, count nothing.

    Rows go missing when a worker died while a batch's changelog records were in flight (the header
    arrived, a row did not), or when local state was damaged and the input is re-read. A row that is
    restored after its revision was sealed opens the next revision, so the instance reaches FHIR.
    """
    key = patient_key_of(patient_from_event(event), event.study_uid, identity)
    incoming = instance_from_event(event, patient_key=key)
    if placed_before(incoming, known_instance):
        return StudyUpdate(header=header)
    missing = known_instance is None
    stale = (
        known_instance is not None
        and 0 <= known_instance.source_offset < at.offset
        and not known_instance.same_content(incoming)
    )
    # This record changed its series in the first run only if it wrote its instance row (not a repeat).
    wrote_instance = missing or stale or (known_instance is not None and known_instance.source_offset == at.offset)
    series_to_write: SeriesInfo | None = None
    if known_series is None:
        series_to_write = series_from_event(event, first_offset=at.offset, event_time=at.event_time)
    elif wrote_instance:  # the row may predate this record's write of it: merging again is harmless if not
        merged_series = merge_series(known_series, event, at.event_time)
        series_to_write = merged_series if merged_series is not known_series else None
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
    if header.commitment_requested or header.ready_now:
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
        header.commitment_requested or header.ready_now or now_wall - header.last_wall_time >= quiet_period
    )


def mark_sealed(header: StudyHeader, sealed_at: str) -> StudyHeader:
    """The open revision is complete: from now on a new instance opens the next one."""
    return _replace(header, status=StudyStatus.SEALED, sealed_at=sealed_at)


def mark_published(header: StudyHeader) -> StudyHeader:
    return _replace(header, status=StudyStatus.PUBLISHED, published_revision=header.revision)


def mark_failed(header: StudyHeader, reason: str) -> StudyHeader:
    return _replace(header, status=StudyStatus.FAILED, failure=reason)


def mark_conflict(header: StudyHeader, sealed_at: str) -> StudyHeader:
    """The open revision is complete but holds instances of more than one patient: it is not uploaded."""
    return _replace(header, status=StudyStatus.CONFLICT, sealed_at=sealed_at, failure=PATIENT_CONFLICT)


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
