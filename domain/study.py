"""Per-study aggregation state and the pure rules that advance it (no Faust, no I/O).

The state of one study is split so that a new instance never rewrites the whole study:

- one small :class:`StudyHeader` per study (patient, study attributes, counts, clocks, status, revision),
- one :class:`SeriesInfo` per series, written when the series first appears or gains an attribute,
- one :class:`InstanceInfo` per SOP Instance UID (the de-duplication key).

:func:`apply_instance` takes what is stored for the event's study, series and instance and returns
what must be written back; :func:`is_ready` decides completeness; :func:`mark_sealed` and
:func:`mark_published` record the decision (those three live in :mod:`domain.readiness`, re-exported
here). The header remembers the study's sources (calling AE, modality) for the completeness rules.
Revisions: a study starts at revision 1; any new or changed instance after a revision was sealed opens
revision + 1, ready after another quiet period.

Replaying a batch is harmless by construction. The header remembers the imaging.raw offset of the
last record applied to it (``applied_offset``) and every row the offset that created it
(``first_offset``): a row counts as known to the header only when it was created at or below that
offset. A batch whose writes reached the changelog only in part (a worker killed while they were in
flight) is therefore applied again exactly: rows written without their header are counted, records
the header already reflects only repair rows that went missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import msgspec

from domain import rejection
from domain.completeness import CompletedBy, add_source
from domain.errors import InvalidRecordError
from domain.events import CommitmentRequest, InstanceEvent, PerformedProcedureStep
from domain.patient import IdentityOptions
from domain.readiness import is_ready as is_ready  # re-exported: the completeness decision and its records
from domain.readiness import mark_conflict as mark_conflict
from domain.readiness import mark_failed as mark_failed
from domain.readiness import mark_published as mark_published
from domain.readiness import mark_registered as mark_registered
from domain.readiness import mark_sealed as mark_sealed
from domain.readiness import needs_check as needs_check
from domain.readiness import ready_signal as ready_signal
from domain.readiness import registration_due as registration_due
from domain.study_state import (
    DEFAULT_IDENTITY,
    Arrival,
    InstanceInfo,
    PatientInfo,
    PatientSeen,
    SeriesInfo,
    StudyHeader,
    StudyStatus,
    StudyUpdate,
    instance_from_event,
    iso_utc,
    merge_latest,
    merge_series,
    patient_from_event,
    patient_key_of,
    series_from_event,
    study_from_event,
)
from domain.study_state import PATIENT_CONFLICT as PATIENT_CONFLICT  # re-exported

_T = TypeVar("_T", bound=msgspec.Struct)
_replace = msgspec.structs.replace


def check_key(record: InstanceEvent | CommitmentRequest, key: bytes | None) -> None:
    """Reject a record whose Kafka key is not its study: the study's records would be on two partitions."""
    if key is None or key != record.study_uid.encode("ascii"):
        raise InvalidRecordError("message key differs from study_uid", reason="key_mismatch")


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
        changes.update({**next_revision(header), "ready_now": True})
    return _replace(resolved, **changes)


# --- Rules ---------------------------------------------------------------------------------------


def _counted(header: StudyHeader | None, first_offset: int) -> bool:
    """Whether a row created at ``first_offset`` is reflected in ``header`` (see the module doc)."""
    return header is not None and first_offset <= header.applied_offset


def _new_header(event: InstanceEvent, at: Arrival, received: str) -> StudyHeader:
    return StudyHeader(
        study=study_from_event(event),
        patient=patient_from_event(event),
        first_received=received,
        partition=at.partition,
        attributes_at=at.event_time,
        first_wall_time=at.wall_time,
    )


def apply_instance(
    header: StudyHeader | None,
    known_series: SeriesInfo | None,
    known_instance: InstanceInfo | None,
    event: InstanceEvent,
    at: Arrival,
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
    counted = known_instance if known_instance is not None and _counted(header, known_instance.first_offset) else None
    if header is not None and _nothing_new(header, incoming, known_instance, counted):
        return StudyUpdate(header=header)
    series_counted = known_series is not None and _counted(header, known_series.first_offset)
    received = iso_utc(at.event_time)  # once per event: the conversion is costly next to the rest
    if header is None:
        header, opened, changes = _new_header(event, at, received), True, {}
    else:
        changes, opened = _changes_for(header, event, incoming, at.event_time)
    replaced_key = (counted.patient_key or header.patient_key) if counted is not None else None
    changes.update(_with_patient(header, event, key, at.event_time, replaced_key))
    sources, overflow = add_source(header.sources, event.calling_ae, event.modality)
    changes.update(sources=sources, sources_overflow=header.sources_overflow or overflow)
    changes.update(rejection.on_arrival(header, event))

    header = _replace(
        header,
        instance_count=header.instance_count + (0 if counted is not None else 1),
        series_count=header.series_count + (0 if series_counted else 1),
        partition=at.partition,
        applied_offset=at.offset,
        **_clocks(header, at, received),
        **changes,
    )
    instance = _replace(
        incoming,
        revision=header.revision,
        first_offset=counted.first_offset if counted is not None else at.offset,
        source_offset=at.offset,
    )
    series = _series_to_write(known_series, event, at)
    return StudyUpdate(header=header, instance=instance, series=series, changed=True, opened_revision=opened)


def _nothing_new(
    header: StudyHeader, incoming: InstanceInfo, known: InstanceInfo | None, counted: InstanceInfo | None
) -> bool:
    """An older version of a known instance, or the same content the header already reflects."""
    if placed_before(incoming, known):
        return True
    return (
        counted is not None
        and counted.source_offset <= header.applied_offset  # the header reflects the row's last write
        and counted.same_content(incoming)
    )


def _series_to_write(known: SeriesInfo | None, event: InstanceEvent, at: Arrival) -> SeriesInfo | None:
    """The series row after one more instance; ``None`` when the stored one stays as it is."""
    if known is None:
        return series_from_event(event, first_offset=at.offset, event_time=at.event_time)
    merged = merge_series(known, event, at.event_time)
    return merged if merged is not known else None


def _clocks(header: StudyHeader, at: Arrival, received: str) -> dict[str, Any]:
    """First and last receipt after one more instance (``received`` is its event time as ISO text);
    an instance older than the latest (out of order) moves only the first receipt."""
    first_received = header.first_received
    if not first_received or received < first_received:
        first_received = received
    if at.event_time >= header.last_event_time:
        last_event_time, last_received = at.event_time, received
    else:
        last_event_time, last_received = header.last_event_time, iso_utc(header.last_event_time)
    return {
        "first_received": first_received,
        "last_received": last_received,
        "last_event_time": last_event_time,
        "last_wall_time": max(header.last_wall_time, at.wall_time),
    }


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
        changes.update(next_revision(header))
    elif incoming.uid in header.commitment_waiting or incoming.uid in header.mpps_waiting:
        changes.update(_named_instance_arrived(header, incoming.uid))
    return changes, opened


def _named_instance_arrived(header: StudyHeader, uid: str) -> dict[str, Any]:
    """An instance a signal naming instances (Storage Commitment, a COMPLETED MPPS) waited for: the last
    one to arrive makes the study committed / completed."""
    changes: dict[str, Any] = {}
    if uid in header.commitment_waiting:
        waiting = tuple(named for named in header.commitment_waiting if named != uid)
        committed = not waiting and not header.commitment_parts_left
        changes.update(commitment_waiting=waiting, commitment_requested=committed)
    if uid in header.mpps_waiting:
        waiting = tuple(named for named in header.mpps_waiting if named != uid)
        changes.update(mpps_waiting=waiting, mpps_completed=not waiting)
    return changes


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


def next_revision(header: StudyHeader) -> dict[str, Any]:
    return {
        "status": StudyStatus.RECEIVING,
        "revision": header.revision + 1,
        "commitment_requested": False,
        "commitment_waiting": (),
        "commitment_transaction": "",
        "commitment_parts_seen": (),
        "commitment_parts_left": 0,
        "commitment_signal": "commitment",
        "failure": "",
        "sealed_at": "",
        "ready_now": False,
        "completed_by": CompletedBy.NOT_YET,
        "mpps_waiting": (),
        "mpps_completed": False,
        "mpps_hold_until": 0.0,
    }


def _repair(
    header: StudyHeader,
    known_series: SeriesInfo | None,
    known_instance: InstanceInfo | None,
    event: InstanceEvent,
    at: Arrival,
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
    # The series row may predate this record's write of it: merging again is harmless if not.
    series_to_write = _series_to_write(known_series, event, at) if known_series is None or wrote_instance else None
    if not missing and not stale and series_to_write is None:
        return StudyUpdate(header=header)
    opened = header.status is not StudyStatus.RECEIVING
    if opened:
        header = _replace(header, last_wall_time=max(header.last_wall_time, at.wall_time), **next_revision(header))
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
    signal: str = "commitment",
) -> StudyHeader:
    """A Storage Commitment request (``signal`` "stow": a complete STOW-RS request) covering the study's
    open revision makes it ready at once.

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
        commitment_signal=signal,
        **applied,
    )


def record_performed_step(
    header: StudyHeader, step: PerformedProcedureStep, missing: Sequence[str], offset: int, hold_until: float
) -> StudyHeader:
    """A Modality Performed Procedure Step of the study that ended, recorded on its header.

    A COMPLETED step naming its instances (its whole list: not ``truncated``) completes the open revision
    once every one is in: ``missing`` (not seen yet) are awaited, the quiet period waiting for them until
    ``hold_until`` (wall clock), and the last of them to arrive completes it (:func:`apply_instance`), as
    for Storage Commitment. A DISCONTINUED step completes nothing; its reason is shown. ``offset`` is the
    record's imaging.raw offset: a record the header already reflects changes nothing.
    """
    if offset <= header.applied_offset:
        return header
    changes: dict[str, Any] = {
        "applied_offset": offset,
        "mpps_uid": step.mpps_uid,
        "mpps_status": step.status,
        "mpps_reason_code": step.reason_code,
        "mpps_reason_meaning": step.reason_meaning,
    }
    completes = step.status == "COMPLETED" and bool(step.sop_instance_uids) and not step.truncated
    if completes and header.status is StudyStatus.RECEIVING:
        waiting = tuple(dict.fromkeys((*header.mpps_waiting, *missing)))
        changes.update(mpps_waiting=waiting, mpps_completed=not waiting, mpps_hold_until=hold_until if waiting else 0.0)
    return _replace(header, **changes)
