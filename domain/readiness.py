"""When a study's open revision is complete, and how the decision is recorded (pure: no Faust, no I/O).

:func:`ready_signal` names the signal that completes the revision, judged with the study's
:class:`~domain.completeness.Completeness` (its quiet period and the signals its sources are trusted
for); :func:`mark_sealed` records it in the header (``completed_by``). Re-exported by
:mod:`domain.study`, which holds the rules that advance a study's state.
"""

from __future__ import annotations

import msgspec

from domain.completeness import ALL_SIGNALS, CompletedBy, Completeness, Signal
from domain.study_state import PATIENT_CONFLICT, StudyHeader, StudyStatus

_replace = msgspec.structs.replace

# StudyHeader.commitment_signal → the signal a source must be trusted for, and what completed the study.
_NAMED_BY = {"stow": (Signal.STOW, CompletedBy.STOW)}
_COMMITMENT = (Signal.COMMITMENT, CompletedBy.COMMITMENT)


def named_by(header: StudyHeader) -> tuple[Signal, CompletedBy]:
    """What named the instances of ``commitment_requested``: a Storage Commitment, or a STOW-RS request."""
    return _NAMED_BY.get(header.commitment_signal, _COMMITMENT)


def ready_signal(
    header: StudyHeader, now_wall: float, now_event_time: float | None, completeness: Completeness
) -> CompletedBy | None:
    """The signal that completes the open revision now, or ``None`` while it is not complete.

    An operator's resolution first, then a Storage Commitment covering the study (only when every source
    of the study is trusted for it), then a COMPLETED MPPS whose instances are all in (likewise; while
    some are not, the quiet period waits for them until ``mpps_hold_until``), else the quiet period.
    Quiet time is judged on both clocks: the wall clock (no new instance processed for the quiet period)
    and event time (``now_event_time`` is how far the input has progressed: the wall clock when the
    aggregator is caught up, else the newest event time it has read). During catch-up after downtime
    instances received seconds apart are processed a long wall-clock time apart, or the other way round;
    requiring both keeps a study from being cut early. ``None`` means event time is unknown.
    """
    if header.status is not StudyStatus.RECEIVING or header.instance_count == 0:
        return None
    if header.ready_now:
        return CompletedBy.RESOLUTION
    if header.commitment_requested and completeness.trusts(named_by(header)[0]):
        return named_by(header)[1]
    if completeness.trusts(Signal.MPPS):
        if header.mpps_completed:
            return CompletedBy.MPPS
        if header.mpps_waiting and now_wall < header.mpps_hold_until:
            return None  # a COMPLETED step named instances not in yet: awaited (aggregator_mpps_timeout)
    if now_event_time is None:
        return None
    quiet = completeness.quiet_period
    if now_wall - header.last_wall_time >= quiet and now_event_time - header.last_event_time >= quiet:
        return CompletedBy.QUIET_PERIOD
    return None


def is_ready(
    header: StudyHeader,
    now_wall: float,
    now_event_time: float | None,
    quiet_period: float,
    trusted: frozenset[Signal] = ALL_SIGNALS,
) -> bool:
    """Whether the open revision of a study is complete (:func:`ready_signal`)."""
    return ready_signal(header, now_wall, now_event_time, Completeness(quiet_period, trusted)) is not None


def needs_check(
    header: StudyHeader,
    now_wall: float,
    quiet_period: float,
    trusted: frozenset[Signal] = ALL_SIGNALS,
    registration_delay: float | None = None,
) -> bool:
    """Cheap pre-check for the completeness timer: worth asking the agent to decide.

    A sealed revision always is: its ready record was not acknowledged yet (a worker stopped in between).
    """
    if header.status is StudyStatus.SEALED:
        return True
    if registration_due(header, now_wall, registration_delay):
        return True
    committed = (header.commitment_requested and named_by(header)[0] in trusted) or (
        header.mpps_completed and Signal.MPPS in trusted
    )
    return header.status is StudyStatus.RECEIVING and (
        committed or header.ready_now or now_wall - header.last_wall_time >= quiet_period
    )


def registration_due(header: StudyHeader, now_wall: float, delay: float | None) -> bool:
    """Whether to announce the study to FHIR now as ``registered`` (``delay``: None when early registration
    is off): its first revision, still receiving, not announced yet, ``delay`` after its first instance.

    Only the first revision: a later one updates an ImagingStudy that exists already. Not a study holding
    instances of more than one patient: the registration would file it under one of them.
    """
    return (
        delay is not None
        and header.status is StudyStatus.RECEIVING
        and header.revision == 1
        and header.published_revision == 0
        and not header.registered_at
        and header.instance_count > 0
        and len(header.patients) <= 1
        and now_wall - header.first_wall_time >= delay
    )


def mark_registered(header: StudyHeader, registered_at: str) -> StudyHeader:
    return _replace(header, registered_at=registered_at)


def mark_sealed(header: StudyHeader, sealed_at: str, completed_by: CompletedBy = CompletedBy.NOT_YET) -> StudyHeader:
    """The open revision is complete (by ``completed_by``): from now on a new instance opens the next one."""
    return _replace(header, status=StudyStatus.SEALED, sealed_at=sealed_at, completed_by=completed_by)


def mark_published(header: StudyHeader) -> StudyHeader:
    return _replace(header, status=StudyStatus.PUBLISHED, published_revision=header.revision)


def mark_failed(header: StudyHeader, reason: str) -> StudyHeader:
    return _replace(header, status=StudyStatus.FAILED, failure=reason)


def mark_conflict(header: StudyHeader, sealed_at: str, completed_by: CompletedBy = CompletedBy.NOT_YET) -> StudyHeader:
    """The open revision is complete but holds instances of more than one patient: it is not uploaded."""
    return _replace(
        header, status=StudyStatus.CONFLICT, sealed_at=sealed_at, failure=PATIENT_CONFLICT, completed_by=completed_by
    )
