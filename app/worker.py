"""``studystream worker``: prepare topics, then hand over to Faust's own worker command."""

from __future__ import annotations

import sys
from pathlib import Path

from app.settings import Settings


def web_port_from_args(args: list[str], default: int) -> int:
    """The ``-p/--web-port`` Faust will use, so the table data dir can be named after it."""
    for i, arg in enumerate(args):
        if arg in ("-p", "--web-port") and i + 1 < len(args):
            return int(args[i + 1])
        if arg.startswith("--web-port="):
            return int(arg.split("=", 1)[1])
    return default


def worker_datadir(settings: Settings, args: list[str]) -> Path:
    """One table directory per worker on a host: RocksDB locks its files against a second process."""
    return settings.state_dir / f"worker-{web_port_from_args(args, settings.web_port)}"


def run_worker(settings: Settings, args: list[str], datadir: Path | None = None) -> None:
    if any(arg in ("-h", "--help") for arg in args):
        # Faust's worker options, without the app (starting it needs Kafka).
        import click
        from faust.cli.faust import cli as faust_cli

        click.echo("studystream worker [--datadir DIR] [Faust worker options]: a Faust worker of StudyStream.\n")
        faust_cli.main(["worker", "--help"], prog_name="studystream")
        return
    from aiokafka.errors import KafkaError

    from adapters.control import read_control
    from adapters.topics import ensure_topics
    from app.stream_app import build_worker
    from domain.errors import ConfigurationError

    try:
        ensure_topics(settings)
    except KafkaError as exc:
        raise ConfigurationError(
            f"cannot reach Kafka at {settings.broker_url} ({exc}); `studystream stack up` starts the local one"
        ) from exc
    worker = build_worker(settings, read_control(settings))
    datadir = datadir or worker_datadir(settings, args)
    datadir.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    sys.argv = ["studystream", "--datadir", str(datadir), "worker", *args]
    worker.app.main()
