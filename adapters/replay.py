"""The Kafka half of ``studystream replay``: read a group's offsets, move them, and reset state when asked.

Moving offsets is only safe while no worker of the group runs: a running member would overwrite the
commit with its own position at the next commit interval. :func:`prepare` therefore describes the
group and the replay refuses while it has members; the broker also rejects an out-of-group commit
while the group is active, which covers a worker starting between the check and the commit.

aiokafka's admin client lists a group's committed offsets but cannot alter them, so the new offsets
are committed by a consumer that uses the group id with a manual assignment (it never joins the group).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from adapters.control import read_control_async, read_generation_async, write_generation_async, write_ready_replay_async
from app.settings import Settings
from domain import replay as rules
from domain.errors import StudyStreamError

COMMIT_METADATA = "studystream replay"


@dataclass(frozen=True, slots=True)
class GroupState:
    group_id: str
    state: str  # Kafka's group state: Empty, Stable, PreparingRebalance, Dead (unknown group), ...
    members: int


@dataclass(frozen=True, slots=True)
class Prepared:
    """Everything read from Kafka before anything is changed: what ``--dry-run`` shows."""

    generation: int
    group: GroupState
    plan: rules.ReplayPlan
    old_commits: dict[tuple[str, int], int]
    generation_plan: rules.GenerationPlan | None = None
    new_group: GroupState | None = None


@dataclass
class Done:
    """What :func:`execute` changed."""

    committed: dict[tuple[str, int], int] = field(default_factory=dict)
    group_id: str = ""
    generation: int = 0
    fenced: dict[int, int] = field(default_factory=dict)  # ready partition → first offset not re-read


def _timeout_ms(settings: Settings) -> int:
    return int(settings.replay_timeout * 1000)


async def describe_group(admin: AIOKafkaAdminClient, group_id: str) -> GroupState:
    # One group per request: aiokafka 0.14 mis-parses a DescribeGroups response listing several.
    (response,) = await admin.describe_consumer_groups([group_id])
    (group,) = response.to_object()["groups"]
    if group["error_code"] != 0:
        raise StudyStreamError(f"cannot describe consumer group {group_id}: error {group['error_code']}")
    return GroupState(group_id, group["state"], len(group["members"]))


async def committed_offsets(admin: AIOKafkaAdminClient, group_id: str) -> dict[tuple[str, int], int]:
    offsets = await admin.list_consumer_group_offsets(group_id)
    return {(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


async def topic_partitions(admin: AIOKafkaAdminClient, topic: str) -> list[int]:
    # Listed first: describing a missing topic would make an auto-creating broker create it.
    if topic not in await admin.list_topics():
        raise rules.ReplayError(f"topic {topic} does not exist")
    (described,) = await admin.describe_topics([topic])
    return sorted(p["partition"] for p in described["partitions"])


async def partition_offsets(
    consumer: AIOKafkaConsumer,
    topic: str,
    partitions: Iterable[int],
    committed: dict[tuple[str, int], int],
    timestamp_ms: int | None,
) -> list[rules.PartitionOffsets]:
    tps = [TopicPartition(topic, p) for p in partitions]
    starts = await consumer.beginning_offsets(tps)
    ends = await consumer.end_offsets(tps)
    at_time = await consumer.offsets_for_times({tp: timestamp_ms for tp in tps}) if timestamp_ms is not None else {}
    return [
        rules.PartitionOffsets(
            partition=tp.partition,
            log_start=starts[tp],
            end=ends[tp],
            committed=committed.get((topic, tp.partition)),
            at_time=found.offset if (found := at_time.get(tp)) is not None else None,
        )
        for tp in tps
    ]


async def prepare(settings: Settings, topic: str, target: rules.ReplayTarget, reset_state: bool) -> Prepared:
    """Read the generation, the group, its offsets and the topic's offsets; plan. Changes nothing."""
    generation = await read_generation_async(settings)
    group_id = rules.group_id_for(settings.app_id, generation)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, request_timeout_ms=_timeout_ms(settings))
    await admin.start()
    try:
        group = await describe_group(admin, group_id)
        old_commits = await committed_offsets(admin, group_id)
        partitions = await topic_partitions(admin, topic)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers, request_timeout_ms=_timeout_ms(settings)
        )
        await consumer.start()
        try:
            timestamp = target.timestamp_ms if target.kind is rules.TargetKind.DATETIME else None
            offsets = await partition_offsets(consumer, topic, partitions, old_commits, timestamp)
        finally:
            await consumer.stop()
        plan = rules.plan_replay(topic, group_id, target, offsets)
        generation_plan = new_group = None
        if reset_state:
            generation_plan = rules.plan_new_generation(settings.app_id, generation, old_commits, plan)
            new_group = await describe_group(admin, generation_plan.group_id)
        return Prepared(generation, group, plan, old_commits, generation_plan, new_group)
    finally:
        await admin.close()


def refusal(prepared: Prepared) -> str | None:
    """Why the replay must not run now (workers of the group are up), or ``None``."""
    for group in (prepared.group, prepared.new_group):
        if group is not None and group.members:
            return (
                f"consumer group {group.group_id} has {group.members} running member(s) (state {group.state}): "
                "stop every `studystream worker` of this app first; a running worker would overwrite the offsets"
            )
    return None


async def commit_offsets(settings: Settings, group_id: str, commits: dict[tuple[str, int], int]) -> None:
    """Commit ``commits`` for ``group_id`` from outside the group (manual assignment, no join)."""
    if not commits:
        return
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=group_id,
        enable_auto_commit=False,
        request_timeout_ms=_timeout_ms(settings),
    )
    await consumer.start()
    try:
        tps = {(topic, p): TopicPartition(topic, p) for topic, p in commits}
        consumer.assign(list(tps.values()))
        await consumer.commit({tps[key]: OffsetAndMetadata(offset, COMMIT_METADATA) for key, offset in commits.items()})
    except KafkaError as exc:  # e.g. a worker joined meanwhile: the broker refuses commits from outside
        raise rules.ReplayError(f"the broker refused the new offsets for group {group_id}: {exc!r}") from exc
    finally:
        await consumer.stop()


async def fence_ready_replay(settings: Settings, prepared: Prepared) -> dict[int, int]:
    """Tell the uploader which ready records the replay re-reads (see :mod:`adapters.control`); return the fence.

    The uploader skips a revision its outcomes table records as published; a re-read record must be
    checked against the FHIR server instead (it may have been restored from a backup). The fence
    keeps any earlier fence of the same group: a second replay before the first was consumed widens it.
    """
    plan = prepared.plan
    control = await read_control_async(settings)
    until = dict(control.ready_replay_until) if control.ready_replay_group == plan.group_id else {}
    for p in plan.partitions:
        if p.reread:
            until[p.partition] = max(until.get(p.partition, 0), p.resume)
    await write_ready_replay_async(settings, plan.group_id, until)
    return until


async def execute(settings: Settings, prepared: Prepared, *, fence_uploads: bool) -> Done:
    """Apply a prepared replay. The caller has checked :func:`refusal`; the broker re-checks at commit."""
    done = Done(group_id=prepared.plan.group_id, generation=prepared.generation)
    gen = prepared.generation_plan
    if gen is not None:
        # Offsets first, generation last: if this stops half-way the workers still use the old generation.
        await commit_offsets(settings, gen.group_id, gen.commits)
        await write_generation_async(
            settings, gen.generation, f"replay {prepared.plan.topic} to {prepared.plan.target.describe()}"
        )
        done.committed, done.group_id, done.generation = dict(gen.commits), gen.group_id, gen.generation
        return done
    if fence_uploads and prepared.plan.reread:
        # Fence first: if the commit then fails, the uploader merely re-checks a few records with FHIR.
        done.fenced = await fence_ready_replay(settings, prepared)
    commits = {(prepared.plan.topic, p): offset for p, offset in prepared.plan.commits.items()}
    await commit_offsets(settings, prepared.plan.group_id, commits)
    done.committed = commits
    return done
