"""The sender's commands: ``send``, ``send-file``, ``echo`` and ``synth`` (registered by ``app/cli.py``).

Exit status of ``send`` and ``send-file``: 0 when every instance was stored; 1 when any instance failed
(the failed files are listed); 3 when no DICOM file was found. ``echo``: 0 when C-ECHO succeeded, else 1.
Human output goes to stdout, progress to stderr; with ``--json`` stdout carries only the JSON summary.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from app.settings import get_settings
from scu import summary as summaries
from scu.progress import make_display
from scu.runner import send_studies
from scu.scan import group_by_study, plan_associations, scan
from scu.sender import Peer, SendPolicy
from scu.sender import echo as send_echo

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_NOTHING_TO_SEND = 3


def _peer_options(command: Callable[..., Any]) -> Callable[..., Any]:
    settings = get_settings()
    options = [
        click.option("--host", default="127.0.0.1", show_default=True, help="Peer host name or address."),
        click.option("--port", type=int, default=settings.dicom_port, show_default=True, help="Peer port."),
        click.option("--called-ae", default=settings.ae_title, show_default=True, help="Peer AE title."),
        click.option("--calling-ae", default=settings.ae_title, show_default=True, help="Our AE title."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _send_options(command: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (only that on stdout)."),
        click.option("--dry-run", is_flag=True, help="List what would be sent; send nothing."),
        click.option("--storage-commitment", is_flag=True, help="Ask for Storage Commitment after each study."),
        click.option(
            "--commitment-timeout",
            type=float,
            default=None,
            help="Seconds to wait for the commitment result [sender_commitment_timeout].",
        ),
        click.option("--retries", type=int, default=None, help="Association retries [sender_retries]."),
        click.option("--retry-backoff", type=float, default=None, help="First retry delay, s [sender_retry_backoff]."),
        click.option("--max-pdu", type=int, default=None, help="Max PDU we receive, bytes [sender_max_pdu]."),
        click.option("--progress/--no-progress", "bars", default=None, help="Progress bars (default: on a terminal)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@_peer_options
@click.option(
    "-j",
    "--studies-in-flight",
    type=click.IntRange(1, 64),
    default=None,
    help="Studies sent at once, each in its own association and process [sender_studies_in_flight].",
)
@_send_options
def send(paths: tuple[Path, ...], studies_in_flight: int | None, **options: Any) -> None:
    """Send DICOM files and folders (recursively, any file name) study by study."""
    in_flight = studies_in_flight or get_settings().sender_studies_in_flight
    sys.exit(run(list(paths), in_flight=in_flight, **options))


@click.command("send-file")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_peer_options
@_send_options
def send_file(files: tuple[Path, ...], **options: Any) -> None:
    """Send single DICOM files, one association per study."""
    sys.exit(run(list(files), in_flight=1, **options))


@click.command()
@_peer_options
def echo(host: str, port: int, called_ae: str, calling_ae: str) -> None:
    """C-ECHO a DICOM peer; exit status 0 only when it answered with success."""
    policy = SendPolicy.from_settings(get_settings())
    started = time.monotonic()
    worked, what = send_echo(Peer(host, port, called_ae, calling_ae), policy)
    click.echo(f"{'ok' if worked else 'FAILED'}: {what} ({(time.monotonic() - started) * 1000:.0f} ms)", err=not worked)
    sys.exit(EXIT_OK if worked else EXIT_FAILED)


@click.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--studies", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--series", type=click.IntRange(min=1), default=1, show_default=True, help="Series per study.")
@click.option("--instances", type=click.IntRange(min=1), default=10, show_default=True, help="Instances per series.")
@click.option("--size", type=click.Choice(["small", "ct", "mr"]), default="small", show_default=True)
@click.option("--modality", type=click.Choice(["CT", "MR", "CR", "DX", "US"]), default=None, help="Only this modality.")
@click.option("--seed", type=int, default=None, help="Make the output (UIDs included) reproducible.")
def synth(
    out: Path, studies: int, series: int, instances: int, size: str, modality: str | None, seed: int | None
) -> None:
    """Write synthetic DICOM studies (made-up patients, proper UIDs and character sets) under OUT."""
    from scu import synth as generator

    started = time.monotonic()
    paths = generator.write_studies(out, studies, series, instances, size=size, seed=seed, modality=modality)
    total = sum(path.stat().st_size for path in paths)
    click.echo(
        f"wrote {len(paths)} instance(s), {total / 1e6:.1f} MB, in {studies} study(ies) under {out} "
        f"in {time.monotonic() - started:.1f} s"
    )
    click.echo(f"send them with: studystream send {out} --host HOST --port PORT --called-ae AE")


def run(
    paths: Sequence[Path],
    *,
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str,
    in_flight: int = 1,
    as_json: bool = False,
    dry_run: bool = False,
    storage_commitment: bool = False,
    commitment_timeout: float | None = None,
    retries: int | None = None,
    retry_backoff: float | None = None,
    max_pdu: int | None = None,
    bars: bool | None = None,
    out: Console | None = None,
    err: Console | None = None,
) -> int:
    """Scan, send and summarize; returns the exit status. Callable from tests and benchmarks."""
    out = out or Console(soft_wrap=True)
    err = err or Console(stderr=True, soft_wrap=True)
    overrides: dict[str, Any] = {"storage_commitment": storage_commitment}
    for name, value in (
        ("retries", retries),
        ("retry_backoff", retry_backoff),
        ("max_pdu", max_pdu),
        ("commitment_timeout", commitment_timeout),
    ):
        if value is not None:
            overrides[name] = value
    policy = SendPolicy.from_settings(get_settings(), **overrides)
    started = time.monotonic()
    scanned = scan(paths)
    studies = group_by_study(scanned.instances)
    if dry_run:
        plans = {study.study_uid: plan_associations(study, policy.contexts_per_association) for study in studies}
        if as_json:
            click.echo(json.dumps(summaries.dry_run_json(studies, plans, scanned.skipped), indent=2))
        else:
            summaries.render_dry_run(studies, plans, scanned.skipped, out)
        return EXIT_OK if studies else EXIT_NOTHING_TO_SEND
    peer = Peer(host, port, called_ae, calling_ae)
    with make_display(studies, err, bars) as display:
        results = send_studies(studies, peer, policy, in_flight, display.on_outcome)
    summary = summaries.summarize(results, scanned.skipped, time.monotonic() - started)
    if as_json:
        click.echo(json.dumps(summaries.to_json(summary), indent=2))
    else:
        summaries.render(summary, out)
    if not studies:
        err.print(f"no DICOM files found ({len(scanned.skipped)} file(s) skipped)", markup=False)
        return EXIT_NOTHING_TO_SEND
    return EXIT_OK if summary.ok else EXIT_FAILED
