"""One aggregator batch: the studies its records touch, over what the tables hold (pure).

The agent reads a batch of imaging.raw records, applies each to a :class:`BatchState` (reads see the
batch's own changes), and writes what changed once, when the batch ends. The table reads come from a
:class:`StateReader` (the study tables in the worker, dicts in tests), so the whole rule — including how
a batch replayed after a crash lands exactly where the first run would have — is testable without Kafka.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from domain import study as rules
from domain.errors import InvalidRecordError
from domain.events import CommitmentRequest, InstanceEvent, PatientResolution, PerformedProcedureStep, StowBoundary
from domain.patient import IdentityOptions


class StateReader(Protocol):
    def header(self, study_uid: str, partition: int) -> rules.StudyHeader | None: ...

    def instance_info(self, study_uid: str, sop_uid: str, partition: int) -> rules.InstanceInfo | None: ...

    def series_info(self, study_uid: str, series_uid: str, partition: int) -> rules.SeriesInfo | None: ...


@dataclass(slots=True)
class PendingStudy:
    """What a batch changed in one study, written once when the batch ends."""

    header: rules.StudyHeader
    instances: dict[str, rules.InstanceInfo] = field(default_factory=dict)  # to write
    series: dict[str, rules.SeriesInfo] = field(default_factory=dict)  # to write
    known_series: dict[str, rules.SeriesInfo] = field(default_factory=dict)  # as stored after the batch
    opened_revision: bool = False


class BatchState:
    """The studies a batch touched; reads fall through to ``reader`` for what the batch did not change."""

    def __init__(self, reader: StateReader, identity: IdentityOptions = rules.DEFAULT_IDENTITY) -> None:
        self.reader = reader
        self.identity = identity
        self.studies: dict[str, PendingStudy] = {}

    def header(self, study_uid: str, partition: int) -> rules.StudyHeader | None:
        pending = self.studies.get(study_uid)
        return pending.header if pending is not None else self.reader.header(study_uid, partition)

    def instance(self, study_uid: str, sop_uid: str, partition: int) -> rules.InstanceInfo | None:
        pending = self.studies.get(study_uid)
        if pending is not None and sop_uid in pending.instances:
            return pending.instances[sop_uid]
        return self.reader.instance_info(study_uid, sop_uid, partition)

    def series(self, study_uid: str, series_uid: str, partition: int) -> rules.SeriesInfo | None:
        pending = self.studies.get(study_uid)
        if pending is not None and series_uid in pending.known_series:
            return pending.known_series[series_uid]
        return self.reader.series_info(study_uid, series_uid, partition)

    def apply(self, update: rules.StudyUpdate) -> None:
        uid = update.header.study.uid
        pending = self.studies.get(uid)
        if pending is None:
            pending = self.studies[uid] = PendingStudy(update.header)
        pending.header = update.header
        if update.instance is not None:
            pending.instances[update.instance.uid] = update.instance
        if update.series is not None:
            pending.series[update.series.uid] = update.series
            pending.known_series[update.series.uid] = update.series
        pending.opened_revision = pending.opened_revision or update.opened_revision

    def mark_opened(self, study_uid: str) -> None:
        """The study needs a completeness check (its pending mark is written with the batch)."""
        self.studies[study_uid].opened_revision = True

    def set_header(self, header: rules.StudyHeader) -> None:
        pending = self.studies.get(header.study.uid)
        if pending is None:
            self.studies[header.study.uid] = PendingStudy(header)
        else:
            pending.header = header


def apply_event(
    batch: BatchState, event: InstanceEvent, at: rules.Arrival, max_instances: int
) -> rules.StudyUpdate | None:
    """Apply one instance event to the batch; ``None`` when it changes nothing (a repeat).

    A study past ``max_instances`` is refused (its ready record must fit one Kafka message).
    """
    study_uid, partition = event.study_uid, at.partition
    header = batch.header(study_uid, partition)
    known_instance = batch.instance(study_uid, event.sop_instance_uid, partition)
    if (
        header is not None
        and known_instance is not None
        and at.offset > header.applied_offset
        and known_instance.source_offset <= header.applied_offset
        and known_instance.first_offset <= header.applied_offset
        and known_instance.same_content(rules.instance_from_event(event))
    ):
        return None  # the common repeat: no series read
    known_series = batch.series(study_uid, event.series_uid, partition)
    update = rules.apply_instance(header, known_series, known_instance, event, at, batch.identity)
    if not update.changed:
        return None
    if update.header.instance_count > max_instances:
        raise InvalidRecordError(
            f"study has more than {max_instances} instances (aggregator_max_instances)", reason="too_many_instances"
        )
    batch.apply(update)
    return update


@dataclass(frozen=True, slots=True)
class CommitmentOutcome:
    """What a Storage Commitment request did to its study."""

    known_study: bool
    missing: int = 0  # instances it names that the study does not hold yet
    changed: bool = False


def apply_commitment(
    batch: BatchState, request: CommitmentRequest | StowBoundary, partition: int, offset: int
) -> CommitmentOutcome:
    """A commitment request naming instances all in the study makes it ready at once (`request_commitment`).

    A complete STOW-RS request (:class:`StowBoundary`, published only with ``receiver_stow_is_study_boundary``)
    is the same kind of boundary and goes through the same rule.
    """
    header = batch.header(request.study_uid, partition)
    if header is None:
        return CommitmentOutcome(known_study=False)
    missing = _not_seen(batch, request.study_uid, request.sop_instance_uids, partition)
    committed = rules.request_commitment(
        header,
        missing,
        offset,
        transaction=request.transaction_uid,
        part=request.part,
        parts=request.parts,
        signal="stow" if isinstance(request, StowBoundary) else "commitment",
    )
    return _named_outcome(batch, header, committed, missing)


def apply_performed_step(
    batch: BatchState, step: PerformedProcedureStep, partition: int, offset: int, hold_until: float
) -> CommitmentOutcome:
    """A Modality Performed Procedure Step that ended (`record_performed_step`): a COMPLETED one naming
    instances all in the study makes it ready at once; those not seen yet are awaited as for a commitment."""
    header = batch.header(step.study_uid, partition)
    if header is None:
        return CommitmentOutcome(known_study=False)
    missing = _not_seen(batch, step.study_uid, step.sop_instance_uids, partition)
    recorded = rules.record_performed_step(header, step, missing, offset, hold_until)
    return _named_outcome(batch, header, recorded, missing)


def _not_seen(batch: BatchState, study_uid: str, named: Sequence[str], partition: int) -> list[str]:
    """The instances a signal names that the study does not hold (yet)."""
    return [sop for sop in named if batch.instance(study_uid, sop, partition) is None]


def _named_outcome(
    batch: BatchState, header: rules.StudyHeader, updated: rules.StudyHeader, missing: Sequence[str]
) -> CommitmentOutcome:
    if updated == header:
        return CommitmentOutcome(known_study=True, missing=len(missing))
    batch.set_header(updated)
    return CommitmentOutcome(known_study=True, missing=len(missing), changed=True)


def apply_resolution(batch: BatchState, resolution: PatientResolution, partition: int, offset: int) -> bool:
    """An operator's resolution of a patient conflict; ``False`` when it changed nothing (not in conflict).

    A resolution naming an identity the study does not hold is an invalid record (dead-lettered).
    """
    header = batch.header(resolution.study_uid, partition)
    if header is None:
        raise InvalidRecordError("resolution for a study not seen", reason="unknown_study")
    header = rules.with_identities(header, batch.identity)
    if not rules.in_conflict(header) and header.status is not rules.StudyStatus.CONFLICT:
        return False
    resolved = rules.resolve_patient(header, resolution.patient_key, offset)
    if resolved is None:
        raise InvalidRecordError("resolution names a patient the study does not hold", reason="unknown_patient_key")
    if resolved == header:
        return False
    batch.set_header(resolved)
    batch.mark_opened(resolved.study.uid)
    return True
