"""The pure half of ``studystream replay``: parse the target, plan new offsets per partition, render the plan.

No Kafka here: :mod:`adapters.replay` reads the broker's offsets into :class:`PartitionOffsets`, asks
:func:`plan_replay` what to commit, and commits it. Offsets follow Kafka's convention: a committed
offset is the NEXT record the group will read.

State generations: the aggregator's and uploader's tables belong to a Faust app *version*. With
version N > 1 the consumer group is ``<app id>-vN``, the changelogs ``<app id>-vN-<table>-changelog``
and the local stores ``<datadir>/vN``; a new generation therefore starts with empty tables and no
committed offsets. :func:`plan_new_generation` decides what the new group starts from.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from domain.errors import StudyStreamError

CHANGELOG_SUFFIX = "-changelog"


class ReplayError(StudyStreamError):
    """A replay that cannot or must not be done (bad target, running workers, unknown topic)."""


class TargetKind(StrEnum):
    EARLIEST = "earliest"
    DATETIME = "datetime"
    OFFSETS = "offsets"


@dataclass(frozen=True, slots=True)
class ReplayTarget:
    """Where to move the group: the log start, the first record at/after a time, or explicit offsets."""

    kind: TargetKind
    timestamp_ms: int = 0  # DATETIME: epoch milliseconds
    offsets: tuple[tuple[int, int], ...] = ()  # OFFSETS: (partition, offset), partitions not listed stay

    def describe(self) -> str:
        if self.kind is TargetKind.EARLIEST:
            return "earliest"
        if self.kind is TargetKind.DATETIME:
            return datetime.fromtimestamp(self.timestamp_ms / 1000).astimezone().isoformat(timespec="seconds")
        return ",".join(f"{p}:{o}" for p, o in self.offsets)


@dataclass(frozen=True, slots=True)
class PartitionOffsets:
    """What the broker says about one partition of the replayed topic."""

    partition: int
    log_start: int  # first offset still in the log (retention may have deleted older ones)
    end: int  # high watermark: offset of the next record to be written
    committed: int | None  # the group's committed offset; None: never committed
    at_time: int | None = None  # DATETIME targets: first offset with timestamp >= target; None: none yet


@dataclass(frozen=True, slots=True)
class PartitionPlan:
    partition: int
    log_start: int
    end: int
    committed: int | None
    target: int  # the offset to commit (== resume when unchanged)
    changed: bool

    @property
    def resume(self) -> int:
        """Where the group resumes today: its commit, or the log start (Faust resets to earliest)."""
        return self.committed if self.committed is not None else self.log_start

    @property
    def reread(self) -> int:
        """Records read again because of the replay (0 when the target is not behind the resume point)."""
        return max(0, self.resume - self.target) if self.changed else 0

    @property
    def skipped(self) -> int:
        """Records the group would never read because the target is ahead of where it stands."""
        return max(0, self.target - self.resume) if self.changed else 0


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    topic: str
    group_id: str
    target: ReplayTarget
    partitions: tuple[PartitionPlan, ...]

    @property
    def reread(self) -> int:
        return sum(p.reread for p in self.partitions)

    @property
    def skipped(self) -> int:
        return sum(p.skipped for p in self.partitions)

    @property
    def commits(self) -> dict[int, int]:
        """Partition → offset to commit: only the partitions the replay moves."""
        return {p.partition: p.target for p in self.partitions if p.changed}


# --- Parsing ---------------------------------------------------------------------------------------


def parse_offsets(spec: str) -> tuple[tuple[int, int], ...]:
    """``"0:120,3:0"`` → ``((0, 120), (3, 0))``; each partition once, offsets >= 0."""
    pairs: dict[int, int] = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        partition_text, sep, offset_text = item.partition(":")
        if not sep:
            raise ReplayError(f"--to-offset item {item!r} is not PARTITION:OFFSET")
        try:
            partition, offset = int(partition_text), int(offset_text)
        except ValueError:
            raise ReplayError(f"--to-offset item {item!r}: partition and offset must be integers") from None
        if partition < 0 or offset < 0:
            raise ReplayError(f"--to-offset item {item!r}: partition and offset must be >= 0")
        if partition in pairs:
            raise ReplayError(f"--to-offset names partition {partition} twice")
        pairs[partition] = offset
    if not pairs:
        raise ReplayError("--to-offset needs at least one PARTITION:OFFSET")
    return tuple(sorted(pairs.items()))


def parse_datetime(text: str) -> int:
    """An ISO 8601 date-time WITH a UTC offset (``2024-05-01T10:00:00+02:00`` or ``...Z``) → epoch ms.

    A time without an offset is refused: whether it meant local time or UTC decides which studies
    are replayed, so the operator must say.
    """
    try:
        parsed = datetime.fromisoformat(text.strip().replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise ReplayError(f"--to-datetime {text!r} is not an ISO 8601 date-time") from None
    if parsed.tzinfo is None:
        raise ReplayError(f"--to-datetime {text!r} has no UTC offset: add Z or e.g. +02:00")
    return int(parsed.timestamp() * 1000)


def make_target(to_earliest: bool, to_datetime: str | None, to_offset: str | None) -> ReplayTarget:
    """Exactly one of the three target options → a :class:`ReplayTarget`."""
    given = [name for name, value in (("--to-earliest", to_earliest), ("--to-datetime", to_datetime),
                                      ("--to-offset", to_offset)) if value]  # fmt: skip
    if len(given) != 1:
        raise ReplayError("give exactly one of --to-earliest, --to-datetime, --to-offset")
    if to_earliest:
        return ReplayTarget(TargetKind.EARLIEST)
    if to_datetime:
        return ReplayTarget(TargetKind.DATETIME, timestamp_ms=parse_datetime(to_datetime))
    return ReplayTarget(TargetKind.OFFSETS, offsets=parse_offsets(to_offset or ""))


# --- Planning --------------------------------------------------------------------------------------


def target_offset(target: ReplayTarget, offsets: PartitionOffsets) -> int | None:
    """The offset the target means on one partition; ``None``: the target leaves it alone."""
    if target.kind is TargetKind.EARLIEST:
        return offsets.log_start
    if target.kind is TargetKind.DATETIME:
        # No record at or after the time: nothing to read again, resume at the end.
        return offsets.at_time if offsets.at_time is not None else offsets.end
    wanted = dict(target.offsets).get(offsets.partition)
    if wanted is None:
        return None
    if not offsets.log_start <= wanted <= offsets.end:
        raise ReplayError(
            f"offset {wanted} of partition {offsets.partition} is outside the log [{offsets.log_start}, {offsets.end}]"
        )
    return wanted


def plan_replay(topic: str, group_id: str, target: ReplayTarget, partitions: Iterable[PartitionOffsets]) -> ReplayPlan:
    items = sorted(partitions, key=lambda p: p.partition)
    known = {p.partition for p in items}
    if target.kind is TargetKind.OFFSETS:
        unknown = sorted(p for p, _ in target.offsets if p not in known)
        if unknown:
            raise ReplayError(f"topic {topic} has no partition {', '.join(map(str, unknown))}")
    plans = []
    for offsets in items:
        wanted = target_offset(target, offsets)
        resume = offsets.committed if offsets.committed is not None else offsets.log_start
        plans.append(
            PartitionPlan(
                partition=offsets.partition,
                log_start=offsets.log_start,
                end=offsets.end,
                committed=offsets.committed,
                target=resume if wanted is None else wanted,
                changed=wanted is not None,
            )
        )
    return ReplayPlan(topic=topic, group_id=group_id, target=target, partitions=tuple(plans))


@dataclass(frozen=True, slots=True)
class GenerationPlan:
    """What ``--reset-state`` does: the next generation, its group, and every offset that group starts from."""

    generation: int
    group_id: str
    commits: dict[tuple[str, int], int]  # (topic, partition) → offset for the NEW group


def group_id_for(app_id: str, generation: int) -> str:
    """Faust's consumer group (and table prefix) of a generation: ``id`` for 1, ``id-vN`` after (``_prepare_id``)."""
    return app_id if generation <= 1 else f"{app_id}-v{generation}"


def plan_new_generation(
    app_id: str,
    current_generation: int,
    old_commits: Mapping[tuple[str, int], int],
    replay: ReplayPlan,
) -> GenerationPlan:
    """The new group continues exactly where the old one stood, except on the replayed topic.

    Every topic the old group committed on (imaging.study.ready, the retry and internal topics) is
    copied, so nothing pending is skipped or read twice; the replayed topic gets the replay's targets
    (partitions the replay does not move keep their old position). The old generation's changelogs
    are left behind: the new generation has its own, empty ones. Partitions the old group never
    committed stay uncommitted, so both groups would start them at the log start.
    """
    old_prefix = f"{replay.group_id}-"
    commits = {
        (topic, partition): offset
        for (topic, partition), offset in old_commits.items()
        if topic != replay.topic and not (topic.startswith(old_prefix) and topic.endswith(CHANGELOG_SUFFIX))
    }
    for p in replay.partitions:
        if p.changed or p.committed is not None:
            commits[(replay.topic, p.partition)] = p.target
    generation = current_generation + 1
    return GenerationPlan(generation=generation, group_id=group_id_for(app_id, generation), commits=commits)


# --- Rendering -------------------------------------------------------------------------------------


def render_plan(plan: ReplayPlan) -> str:
    """The dry-run table: one line per partition, then the totals."""
    header = f"{'partition':>9}  {'log start':>10}  {'end':>10}  {'committed':>10}  {'target':>10}  {'re-read':>8}"
    lines = [
        f"Replay of {plan.topic} for consumer group {plan.group_id} to {plan.target.describe()}:",
        header,
        "-" * len(header),
    ]
    for p in plan.partitions:
        committed = str(p.committed) if p.committed is not None else "-"
        target = str(p.target) if p.changed else "(same)"
        lines.append(f"{p.partition:>9}  {p.log_start:>10}  {p.end:>10}  {committed:>10}  {target:>10}  {p.reread:>8}")
    lines.append(f"{plan.reread} event(s) will be read again.")
    if plan.skipped:
        lines.append(f"WARNING: {plan.skipped} event(s) not yet read will be skipped (target ahead of the group).")
    return "\n".join(lines)


def render_generation(plan: GenerationPlan, replayed_topic: str) -> str:
    others = sorted({topic for topic, _ in plan.commits if topic != replayed_topic})
    return (
        f"State reset: generation {plan.generation}, consumer group {plan.group_id}, empty tables.\n"
        f"The new group starts {replayed_topic} at the targets above and continues "
        f"{', '.join(others) if others else 'no other topic'} where the old group stood."
    )
