"""``studystream receive``: the DICOM C-STORE SCP feeding ``imaging.raw``.

With ``STUDYSTREAM_RECEIVER_PROCESSES`` > 1 this process supervises that many receiving processes that
share the port through SO_REUSEPORT; each has its own outbox, temp directory and metrics port
(metrics port + slot).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

import click

from adapters.log_setup import configure_logging
from app.settings import Settings, get_settings

log = logging.getLogger(f"studystream.{__name__}")
_RESTART_DELAY = 1.0  # seconds before a crashed receiving process is started again


@click.command("receive")
@click.option("--port", type=int, default=None, help="Port to listen on [STUDYSTREAM_DICOM_PORT].")
@click.option("--ae-title", default=None, help="AE title of the receiver [STUDYSTREAM_AE_TITLE].")
@click.option(
    "--storage-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where instances are stored [STUDYSTREAM_STORAGE_DIR].",
)
@click.option(
    "--processes", type=int, default=None, help="Receiving processes on the port [STUDYSTREAM_RECEIVER_PROCESSES]."
)
@click.option(
    "--log-level",
    default=None,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Level of StudyStream's own lines [STUDYSTREAM_LOG_LEVEL, default INFO]; libraries: STUDYSTREAM_LOG_LEVELS.",
)
@click.option("--slot", type=int, default=None, hidden=True)
def receive(
    port: int | None,
    ae_title: str | None,
    storage_dir: Path | None,
    processes: int | None,
    log_level: str | None,
    slot: int | None,
) -> None:
    """Receive DICOM instances (C-STORE, C-ECHO), store them as received and publish one event each."""
    settings = get_settings()
    log_level = (log_level or settings.log_level).upper()
    configure_logging(settings, "receiver", log_level)
    port = port or settings.dicom_port
    ae_title = ae_title or settings.ae_title
    storage_dir = storage_dir or settings.storage_dir
    count = processes or settings.receiver_processes
    from domain.errors import StudyStreamError
    from scp.commitment import parse_commitment_peers
    from scp.outbox import OutboxInUse

    try:
        parse_commitment_peers(settings.receiver_commitment_peers)  # a typo fails here, not at the first request
        if slot is None:
            from scp.receiver import adopt_orphan_outboxes

            adopt_orphan_outboxes(settings, count)
        if slot is not None or count == 1:
            from scp.receiver import run_receiver

            sys.exit(run_receiver(settings, port, ae_title, storage_dir, slot or 0))
    except OutboxInUse as exc:
        raise click.ClickException(f"{exc} (one receiver per state directory)") from None
    except StudyStreamError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(_supervise(settings, count, port, ae_title, storage_dir, log_level))


def _supervise(settings: Settings, count: int, port: int, ae_title: str, storage_dir: Path, log_level: str) -> int:
    """Run ``count`` receiving processes; restart any that dies; forward SIGTERM/SIGINT."""

    def spawn(slot: int) -> subprocess.Popen[bytes]:
        argv = [
            sys.executable,
            "-m",
            "scp.cli",
            "--port",
            str(port),
            "--ae-title",
            ae_title,
            "--storage-dir",
            str(storage_dir),
            "--log-level",
            log_level,
            "--slot",
            str(slot),
        ]
        return subprocess.Popen(argv)  # noqa: S603 - our own interpreter and module

    children = {slot: spawn(slot) for slot in range(count)}
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stopping:
        time.sleep(0.5)
        for slot, child in list(children.items()):
            if child.poll() is not None and not stopping:
                log.warning("receiving process %d exited with %s; restarting", slot, child.returncode)
                time.sleep(_RESTART_DELAY)
                children[slot] = spawn(slot)
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + settings.receiver_publish_timeout + 5
    for child in children.values():
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
    return 0


@click.group("receiver")
def receiver() -> None:
    """The receiver's state: its outbox quarantine."""


@receiver.group("quarantine")
def quarantine() -> None:
    """Events the broker refused for good (too large, invalid, not authorised), kept aside with the reason."""


def _outboxes(settings: Settings) -> list[tuple[int, Path]]:
    from scp.receiver import outbox_path, slot_of_outbox

    base = outbox_path(settings, 0)
    found = [(0, base)] if base.exists() else []
    if base.parent.is_dir():
        for path in sorted(base.parent.glob(f"{base.stem}-*{base.suffix}")):
            slot = slot_of_outbox(settings, path)
            if slot is not None:
                found.append((slot, path))
    return found


@quarantine.command("list")
def quarantine_list() -> None:
    """One line per quarantined event: ID (slot:row), study, SOP instance, size, when, why."""
    from scp.outbox import list_quarantine

    total = 0
    for slot, path in _outboxes(get_settings()):
        for row in list_quarantine(path):
            total += 1
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(row.quarantined_at))
            click.echo(f"{slot}:{row.id}\t{row.study_uid}\t{row.sop_instance_uid}\t{row.size} B\t{when}\t{row.reason}")
    click.echo(f"{total} quarantined event(s)")


@quarantine.command("retry")
@click.argument("ids", nargs=-1)
def quarantine_retry(ids: tuple[str, ...]) -> None:
    """Send quarantined events again (all, or the IDs given as slot:row); the running receiver publishes them."""
    from scp.outbox import retry_quarantine

    wanted: dict[int, list[int]] = {}
    for item in ids:
        slot_text, _, row_text = item.rpartition(":")
        if not row_text.isdigit() or (slot_text and not slot_text.isdigit()):
            raise click.BadParameter(f"{item!r} is not an ID as `quarantine list` prints it (slot:row)")
        wanted.setdefault(int(slot_text or 0), []).append(int(row_text))
    moved = 0
    for slot, path in _outboxes(get_settings()):
        if not ids or slot in wanted:
            moved += retry_quarantine(path, wanted.get(slot) if ids else None)
    click.echo(f"{moved} event(s) moved back to the outbox")


if __name__ == "__main__":
    receive()
