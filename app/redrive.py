"""``studystream redrive``: send dead letters back to where they came from, after the cause was fixed.

Reads ``imaging.dlq`` from its beginning with a group-less consumer, selects by stage, study and the
time a record was dead-lettered, and sends each selected record (its original key, value and headers,
plus ``studystream-redriven-from``) back to its source topic. The offsets sent back are recorded on
the control topic (key ``redriven/<app id>``) once the broker acknowledged them, so a second run sends
nothing twice; should the run stop in between, the records are sent again, which the aggregator (by
SOP Instance UID) and the uploader (by revision) treat as the repeats they are. Workers may keep
running: the records are ordinary input to them.
"""

from __future__ import annotations

import asyncio

import click
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from adapters.control import read_control_async, redrive_key, write_control_async
from app.settings import Settings, get_settings
from domain import dead_letters
from domain import redrive as rules


def routes(settings: Settings) -> rules.Routes:
    from app.topology import topology

    return rules.Routes(
        raw=settings.topic_raw,
        ready=settings.topic_ready,
        to_ready=frozenset({settings.topic_retry, topology(settings).due.name}),
    )


async def read_dead_letters(settings: Settings) -> list[rules.Letter]:
    """Every record of the DLQ topic, oldest first per partition."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        group_id=None,
        fetch_max_bytes=settings.max_message_bytes,
        max_partition_fetch_bytes=settings.max_message_bytes,
        request_timeout_ms=int(settings.replay_timeout * 1000),
    )
    await consumer.start()
    letters: list[rules.Letter] = []
    try:
        # Listed first: subscribing to a missing topic would make an auto-creating broker create it.
        if settings.topic_dlq not in await consumer.topics():
            return []
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
        await admin.start()
        try:
            (described,) = await admin.describe_topics([settings.topic_dlq])
        finally:
            await admin.close()
        partitions = sorted(p["partition"] for p in described["partitions"])
        tps = [TopicPartition(settings.topic_dlq, p) for p in partitions]
        consumer.assign(tps)
        begin, end = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
        pending = {tp for tp in tps if end[tp] > begin[tp]}
        for tp in pending:
            consumer.seek(tp, begin[tp])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.replay_timeout
        while pending:
            if loop.time() > deadline:
                raise rules.RedriveError(f"{settings.topic_dlq} could not be read within {settings.replay_timeout} s")
            batch = await consumer.getmany(*pending, timeout_ms=500)
            for records in batch.values():
                for r in records:
                    letters.append(
                        rules.Letter(
                            r.partition,
                            r.offset,
                            r.timestamp or 0,
                            r.key,
                            r.value or b"",
                            dead_letters.header_map(r.headers or ()),
                        )
                    )
            pending = {tp for tp in pending if await consumer.position(tp) < end[tp]}
    finally:
        await consumer.stop()
    return sorted(letters, key=lambda letter: (letter.timestamp_ms, letter.partition, letter.offset))


async def prepare(settings: Settings, chosen: rules.RedriveFilter) -> tuple[list[rules.Planned], rules.Ledger]:
    control = await read_control_async(settings)
    ledger = rules.Ledger.decode(control.redrive_ledger)
    letters = await read_dead_letters(settings)
    return rules.plan(letters, chosen, routes(settings), ledger), ledger


async def send_back(settings: Settings, planned: list[rules.Planned], ledger: rules.Ledger) -> int:
    """Send the planned records back, wait for the broker, then record them in the ledger. Returns how many."""
    chosen = [p for p in planned if p.target]
    if not chosen:
        return 0
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        max_request_size=settings.max_message_bytes,
    )
    await producer.start()
    try:
        futures = [
            await producer.send(
                item.target,  # type: ignore[arg-type]
                value=item.letter.value,
                key=item.letter.key,
                headers=rules.redrive_headers(item.letter, settings.topic_dlq),
            )
            for item in chosen
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    for item in chosen:
        ledger.add(item.letter.partition, item.letter.offset)
    await write_control_async(settings, redrive_key(settings.app_id), ledger.encode())
    return len(chosen)


@click.command("redrive")
@click.option("--stage", "stages", multiple=True, help="Only dead letters of this stage (aggregator, uploader, retry).")
@click.option("--study", "study_uid", default="", metavar="UID", help="Only the dead letters of this study.")
@click.option(
    "--since", metavar="ISO-8601", help="Only records dead-lettered at or after this time (UTC offset required)."
)
@click.option("--until", metavar="ISO-8601", help="Only records dead-lettered before this time.")
@click.option("--dry-run", is_flag=True, help="List what would be sent back; send nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def redrive(
    stages: tuple[str, ...], study_uid: str, since: str | None, until: str | None, dry_run: bool, yes: bool
) -> None:
    """Send dead letters back to the topic they came from, once their cause is fixed.

    \b
    imaging.raw records go back to imaging.raw, study revisions to imaging.study.ready. Records already
    sent back by an earlier run are skipped, so running it twice is safe. Workers may keep running.
    """
    settings = get_settings()
    chosen = rules.RedriveFilter(
        stages=frozenset(stages),
        study_uid=study_uid,
        since_ms=rules.parse_time(since, "--since"),
        until_ms=rules.parse_time(until, "--until"),
    )
    planned, ledger = asyncio.run(prepare(settings, chosen))
    click.echo(rules.render(planned))
    if dry_run:
        click.echo("Dry run: nothing sent.")
        return
    if not any(p.target for p in planned):
        click.echo("Nothing to send back.")
        return
    if not yes:
        click.confirm("Send these records back?", abort=True)
    sent = asyncio.run(send_back(settings, planned, ledger))
    click.echo(f"Sent {sent} record(s) back; recorded on {settings.topic_control}.")
