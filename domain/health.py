"""The pure half of ``studystream status``: what was seen, and the verdict (healthy, degraded, down).

The adapters probe the broker, the FHIR server, the receivers' ``/health`` and the workers' web API
and fill a :class:`Snapshot`; what they read from receivers and workers is decoded by
:mod:`domain.health_decode` first (a trust boundary). :func:`judge` turns a snapshot into a
:class:`Verdict` with thresholds from the settings. No I/O, no clock: ages come in as numbers.

Down (exit status 2): the broker or the FHIR server unreachable, a receiver unreachable or not
serving, no worker in the consumer group (or the group cannot be read). Degraded (1): everything
else that needs a look: lag, outbox or quarantine above a threshold, a receiver without its broker,
unreadable health, parked, failed or conflicting studies, dead letters in the window, a rebalancing
group, a worker API that did not answer. Healthy (0): none of these.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum


class Level(IntEnum):
    """Also the exit status of ``studystream status``."""

    HEALTHY = 0
    DEGRADED = 1
    DOWN = 2

    @property
    def word(self) -> str:
        return {Level.HEALTHY: "healthy", Level.DEGRADED: "degraded", Level.DOWN: "down"}[self]


STUDY_STATUSES = ("receiving", "ready", "published", "failed", "conflict")


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Above each (strictly), the pipeline is degraded."""

    partition_lag: int
    outbox_depth: int
    quarantine_depth: int
    dead_letters: int
    parked: int
    failed: int  # failed plus conflicting studies


@dataclass(frozen=True, slots=True)
class Reachability:
    """The broker or the FHIR server: answered or not (``detail``: what answered, or why not)."""

    name: str
    target: str  # an address without credentials
    reachable: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ReceiverHealth:
    """One receiver's ``/health``; ``readable`` false when it answered something that is not its report."""

    url: str
    reachable: bool
    http_status: int | None = None
    readable: bool = False
    serving: bool | None = None
    broker_connected: bool | None = None
    outbox_depth: int | None = None
    quarantine_depth: int | None = None
    associations: int | None = None
    error: str = ""


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """One partition the group consumes; ``committed`` is the next offset the group reads (Kafka's convention)."""

    topic: str
    partition: int
    log_start: int
    end: int
    committed: int | None

    @property
    def lag(self) -> int:
        position = self.committed if self.committed is not None else self.log_start
        return max(0, self.end - max(position, self.log_start))


@dataclass(frozen=True, slots=True)
class WorkerMember:
    """A member of the worker's consumer group; ``partitions`` is ``None`` when its assignment is unreadable."""

    member_id: str
    client_id: str
    host: str
    url: str = ""  # the worker's web URL as it advertises it to the group (Faust's canonical URL)
    partitions: Mapping[str, tuple[int, ...]] | None = field(default_factory=dict)
    state: str = ""  # the worker's own /health: "ok", "rebalancing", "recovering", "unreachable", "unreadable"


@dataclass(frozen=True, slots=True)
class GroupInfo:
    group_id: str
    state: str = ""  # Kafka's group state: Stable, PreparingRebalance, Empty, Dead, ...
    members: tuple[WorkerMember, ...] = ()
    error: str = ""


@dataclass(frozen=True, slots=True)
class Lag:
    partitions: tuple[PartitionLag, ...] = ()
    error: str = ""

    def by_topic(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for p in self.partitions:
            totals[p.topic] = totals.get(p.topic, 0) + p.lag
        return totals


@dataclass(frozen=True, slots=True)
class StudyCounts:
    """What the workers' web API says about the studies: counts, parked uploads and the failed ones' UIDs."""

    counts: Mapping[str, int] = field(default_factory=dict)
    parked: int = 0
    oldest_parked_seconds: float = 0.0
    failed_uids: tuple[str, ...] = ()
    complete: bool = True  # every worker listed its studies
    workers_asked: int = 0
    workers_answered: int = 0
    error: str = ""

    def count(self, status: str) -> int:
        return self.counts.get(status, 0)


@dataclass(frozen=True, slots=True)
class DeadLetters:
    topic: str
    window_seconds: float
    count: int | None = None
    error: str = ""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything ``status`` saw. ``None``: not asked (the broker did not answer)."""

    broker: Reachability
    fhir: Reachability
    receivers: tuple[ReceiverHealth, ...] = ()
    group: GroupInfo | None = None
    lag: Lag | None = None
    studies: StudyCounts | None = None
    dead_letters: DeadLetters | None = None


@dataclass(frozen=True, slots=True)
class Finding:
    component: str
    level: Level
    message: str


@dataclass(frozen=True, slots=True)
class Verdict:
    level: Level
    findings: tuple[Finding, ...]

    def of(self, component: str) -> Level:
        """The worst level found for a component (its row's state on the screen)."""
        return max((f.level for f in self.findings if f.component == component), default=Level.HEALTHY)


def judge(snapshot: Snapshot, limits: Thresholds) -> Verdict:
    """The verdict on a snapshot: the worst finding's level, and every finding."""
    findings = [
        *_reachability(snapshot.broker),
        *_reachability(snapshot.fhir),
        *(f for r in snapshot.receivers for f in _receiver(r, limits)),
        *_group(snapshot.group),
        *_lag(snapshot.lag, limits),
        *_studies(snapshot.studies, limits),
        *_dead_letters(snapshot.dead_letters, limits),
    ]
    return Verdict(max((f.level for f in findings), default=Level.HEALTHY), tuple(findings))


def _reachability(service: Reachability) -> Iterable[Finding]:
    if not service.reachable:
        yield Finding(service.name, Level.DOWN, f"{service.name} unreachable at {service.target}: {service.detail}")


def _receiver(r: ReceiverHealth, limits: Thresholds) -> Iterable[Finding]:
    name = f"receiver {r.url}"
    if not r.reachable:
        yield Finding("receivers", Level.DOWN, f"{name} unreachable: {r.error}")
        return
    if r.http_status != 200 or r.serving is False:
        yield Finding("receivers", Level.DOWN, f"{name} not serving (HTTP {r.http_status})")
        return
    if not r.readable:
        yield Finding("receivers", Level.DEGRADED, f"{name}: unreadable health ({r.error})")
        return
    if r.broker_connected is False:
        yield Finding("receivers", Level.DEGRADED, f"{name} has no connection to the broker")
    if (r.quarantine_depth or 0) > limits.quarantine_depth:
        yield Finding("receivers", Level.DEGRADED, f"{name}: {r.quarantine_depth} events in quarantine")
    if (r.outbox_depth or 0) > limits.outbox_depth:
        yield Finding("receivers", Level.DEGRADED, f"{name}: outbox depth {r.outbox_depth}")


def _group(group: GroupInfo | None) -> Iterable[Finding]:
    if group is None:
        return
    if group.error:
        yield Finding("workers", Level.DOWN, f"consumer group {group.group_id} unreadable: {group.error}")
        return
    if not group.members:
        yield Finding("workers", Level.DOWN, f"no worker in consumer group {group.group_id} (state {group.state})")
        return
    if group.state != "Stable":
        yield Finding("workers", Level.DEGRADED, f"consumer group {group.group_id} is {group.state}")
    for member in group.members:
        who = member.url or member.client_id
        if member.partitions is None:
            yield Finding("workers", Level.DEGRADED, f"worker {who}: unreadable partition assignment")
        if member.state and member.state != "ok":
            yield Finding("workers", Level.DEGRADED, f"worker {who}: {member.state}")


def _lag(lag: Lag | None, limits: Thresholds) -> Iterable[Finding]:
    if lag is None:
        return
    if lag.error:
        yield Finding("lag", Level.DEGRADED, f"consumer lag unreadable: {lag.error}")
        return
    behind = [p for p in lag.partitions if p.lag > limits.partition_lag]
    if behind:
        worst = max(behind, key=lambda p: p.lag)
        yield Finding(
            "lag",
            Level.DEGRADED,
            f"{len(behind)} partition(s) lag more than {limits.partition_lag} records "
            f"(worst {worst.topic}[{worst.partition}]: {worst.lag})",
        )


def _studies(studies: StudyCounts | None, limits: Thresholds) -> Iterable[Finding]:
    if studies is None:
        return
    if studies.error:
        yield Finding("studies", Level.DEGRADED, f"studies unavailable: {studies.error}")
        return
    if not studies.complete:
        answered = f"{studies.workers_answered} of {studies.workers_asked}"
        yield Finding("studies", Level.DEGRADED, f"study list incomplete ({answered} workers answered)")
    stuck = studies.count("failed") + studies.count("conflict")
    if stuck > limits.failed:
        yield Finding(
            "studies",
            Level.DEGRADED,
            f"{studies.count('failed')} failed and {studies.count('conflict')} conflicting studies",
        )
    if studies.parked > limits.parked:
        yield Finding(
            "studies",
            Level.DEGRADED,
            f"{studies.parked} uploads parked (oldest {studies.oldest_parked_seconds:.0f} s)",
        )


def _dead_letters(dlq: DeadLetters | None, limits: Thresholds) -> Iterable[Finding]:
    if dlq is None:
        return
    if dlq.error or dlq.count is None:
        yield Finding("dead letters", Level.DEGRADED, f"{dlq.topic} unreadable: {dlq.error}")
    elif dlq.count > limits.dead_letters:
        yield Finding(
            "dead letters", Level.DEGRADED, f"{dlq.count} dead letters in the last {dlq.window_seconds:.0f} s"
        )
