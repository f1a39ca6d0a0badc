"""``studystream replay``: move the pipeline's consumer-group offsets back (or forward) to re-run history."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from app.settings import Settings, get_settings
from domain import replay as rules

REFUSED_EXIT = 3


def _topic_choice(settings: Settings, topic: str | None) -> str:
    chosen = topic or settings.topic_ready
    if chosen not in (settings.topic_raw, settings.topic_ready):
        raise rules.ReplayError(
            f"--topic must be {settings.topic_raw} (re-aggregate) or {settings.topic_ready} (re-upload), not {chosen}"
        )
    return chosen


@click.command("replay")
@click.option(
    "--topic",
    default=None,
    metavar="TOPIC",
    help="imaging.study.ready (default: re-upload to FHIR) or imaging.raw (re-aggregate studies); "
    "the names are STUDYSTREAM_TOPIC_READY / STUDYSTREAM_TOPIC_RAW.",
)
@click.option("--to-earliest", is_flag=True, help="Replay everything still in the topic.")
@click.option(
    "--to-datetime",
    metavar="ISO-8601",
    help="Replay from the first event at or after this time; the UTC offset is required (…Z or …+02:00).",
)
@click.option("--to-offset", metavar="P:O,...", help="Set these partitions to these offsets; others stay.")
@click.option("--dry-run", is_flag=True, help="Print current and target offsets per partition; change nothing.")
@click.option(
    "--reset-state",
    is_flag=True,
    help="imaging.raw only: rebuild the studies from scratch in a new state generation (fresh tables).",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def replay(
    topic: str | None,
    to_earliest: bool,
    to_datetime: str | None,
    to_offset: str | None,
    dry_run: bool,
    reset_state: bool,
    yes: bool,
) -> None:
    """Re-run history by resetting the app's consumer-group offsets. Stop every worker first.

    \b
    imaging.study.ready (default): the uploader re-reads the study revisions from the target and
      uploads every one the FHIR server lacks (or holds at a lower revision); revisions already there
      are skipped, so nothing is duplicated. The uploader asks the server about each re-read revision
      instead of trusting what it recorded (e.g. after the server was restored from a backup).
    imaging.raw: the aggregator re-reads the instances. Without --reset-state they are de-duplicated
      against the existing study state (SOP Instance UID), so only instances the state lacks change
      anything. With --reset-state the app moves to a new state generation (Faust app version: new
      consumer group, new changelogs, new local stores); studies are rebuilt from the replayed events
      only, imaging.study.ready and the uploader's own topics continue where they stood. Use
      --to-earliest unless you know no study before the target will receive more instances.

    Exits 3 (changing nothing) while workers of the group are running.
    """
    from adapters import replay as offsets

    settings = get_settings()
    chosen = _topic_choice(settings, topic)
    target = rules.make_target(to_earliest, to_datetime, to_offset)
    if reset_state and chosen != settings.topic_raw:
        raise rules.ReplayError(
            f"--reset-state rebuilds the aggregator's state: use it with --topic {settings.topic_raw}"
        )
    prepared = asyncio.run(offsets.prepare(settings, chosen, target, reset_state))
    fence_uploads = chosen == settings.topic_ready
    _show_plan(prepared, chosen, fence_uploads)
    refused = offsets.refusal(prepared)
    if dry_run:
        if refused:
            click.echo(f"Note: the replay itself would be refused now: {refused}")
        click.echo("Dry run: nothing changed.")
        return
    if refused:
        click.echo(f"Refused: {refused}", err=True)
        raise SystemExit(REFUSED_EXIT)
    if not prepared.plan.commits and prepared.generation_plan is None:
        click.echo("Nothing to change.")
        return
    if not yes:
        click.confirm("Apply these offsets?", abort=True)
    _show_done(asyncio.run(offsets.execute(settings, prepared, fence_uploads=fence_uploads)))


def _show_plan(prepared: Any, topic: str, fence_uploads: bool) -> None:
    click.echo(rules.render_plan(prepared.plan))
    if prepared.generation_plan is not None:
        click.echo(rules.render_generation(prepared.generation_plan, topic))
    if fence_uploads and prepared.plan.reread:
        click.echo("The uploader will check every re-read study revision against the FHIR server.")


def _show_done(done: Any) -> None:
    if done.fenced:
        fence = ",".join(f"{p}:{o}" for p, o in sorted(done.fenced.items()))
        click.echo(f"Ready records below offsets {fence} are re-checked against FHIR by the uploader.")
    click.echo(
        f"Committed {len(done.committed)} offset(s) for consumer group {done.group_id} "
        f"(state generation {done.generation}). Start the workers to replay."
    )
