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

from app.settings import Settings, get_settings

LOG = logging.getLogger("scp")
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
    "--log-level", default="INFO", show_default=True, type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"])
)
@click.option("--slot", type=int, default=None, hidden=True)
def receive(
    port: int | None,
    ae_title: str | None,
    storage_dir: Path | None,
    processes: int | None,
    log_level: str,
    slot: int | None,
) -> None:
    """Receive DICOM instances (C-STORE, C-ECHO), store them as received and publish one event each."""
    settings = get_settings()
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s")
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, logging.getLevelName(log_level)))
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
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
            from scp.server import adopt_orphan_outboxes

            adopt_orphan_outboxes(settings, count)
        if slot is not None or count == 1:
            from scp.server import run_receiver

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
                LOG.warning("receiving process %d exited with %s; restarting", slot, child.returncode)
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


if __name__ == "__main__":
    receive()
