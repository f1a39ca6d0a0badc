"""``studystream worker``: prepare topics, then hand over to Faust's own worker command.

``faust -A app.worker:app worker`` (Faust's command itself) runs the same worker: the module builds it
on first access of ``app`` (:func:`for_faust_cli`), reading the state generation from Kafka then.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import faust

from app.settings import Settings

log = logging.getLogger(f"studystream.{__name__}")
READY_MESSAGE = "worker ready"  # once per start, when Faust has recovered the tables and serves the web view
_FAUST_LEVEL_OPTIONS = ("-l", "--loglevel")


class _HasApp(Protocol):
    app: faust.App


_W = TypeVar("_W", bound=_HasApp)


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


def split_faust_log_level(args: list[str]) -> tuple[str | None, list[str]]:
    """Faust's ``-l/--loglevel LEVEL`` taken out of ``args``: it sets StudyStream's own level here."""
    level, rest, i = None, [], 0
    while i < len(args):
        arg = args[i]
        if arg in _FAUST_LEVEL_OPTIONS and i + 1 < len(args):
            level, i = args[i + 1], i + 2
            continue
        if arg.startswith("--loglevel="):
            level = arg.split("=", 1)[1]
        elif arg.startswith("-l") and len(arg) > 2 and not arg.startswith("--"):
            level = arg[2:]
        else:
            rest.append(arg)
        i += 1
    return level, rest


class StudyStreamWorker(faust.Worker):
    """Faust's worker, with StudyStream's own start and stop lines (Faust's at INFO are off by default)."""

    input_topic = ""  # the topic whose partitions the ready line counts (set by :func:`worker_class`)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._begun_at = time.monotonic()

    async def on_startup_finished(self) -> None:
        await super().on_startup_finished()
        if self._shutdown_immediately:
            return
        assigned = self.app.consumer.assignment()
        log.info(
            "%s in %.1f s: group %s, web view %s, %d %s partition(s) here",
            READY_MESSAGE, time.monotonic() - self._begun_at, self.app.conf.id, self.app.conf.canonical_url,
            sum(tp.topic == self.input_topic for tp in assigned), self.input_topic,
        )  # fmt: skip

    def on_worker_shutdown(self) -> None:
        log.info("worker stopping")
        super().on_worker_shutdown()


def worker_class(settings: Settings) -> type[StudyStreamWorker]:
    return type("Worker", (StudyStreamWorker,), {"input_topic": settings.topic_raw})


def for_faust_cli(settings: Settings, build: Callable[[], _W]) -> _W:
    """The worker ``build`` makes, for ``faust -A app.worker:app worker``, with what ``studystream
    worker`` prepares before Faust starts: StudyStream's logging (from the first line), the topics, the
    state directory Faust makes the table directory in, the worker's start and stop lines."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    return prepare_worker(settings, build)


def prepare_worker(settings: Settings, build: Callable[[], _W], level: str | None = None) -> _W:
    """What both ways of starting a worker do before Faust starts: StudyStream's logging at ``level`` (from
    the first line, and again in Faust's own setup), the topics, the worker ``build`` makes, with the worker's
    start and stop lines."""
    from aiokafka.errors import KafkaError

    from adapters.log_setup import configure_logging, dict_config
    from adapters.topics import ensure_topics
    from domain.errors import ConfigurationError

    configure_logging(settings, "worker", level)
    try:
        ensure_topics(settings)
    except KafkaError as exc:
        raise ConfigurationError(
            f"cannot reach Kafka at {settings.broker_url} ({exc}); `studystream stack up` starts the local one"
        ) from exc
    worker = build()
    worker.app.conf.logging_config = dict_config(settings, "worker", level)
    worker.app.conf.Worker = worker_class(settings)
    return worker


def _help() -> None:
    """Faust's worker options, without the app (starting it needs Kafka)."""
    import click
    from faust.cli.faust import cli as faust_cli

    click.echo(
        "studystream worker [--datadir DIR] [--log-level LEVEL] [Faust worker options]: a Faust worker of "
        "StudyStream.\n-l/--loglevel is the same as --log-level (StudyStream's own lines); libraries log at "
        "WARNING unless STUDYSTREAM_LOG_LEVELS names them.\n"
    )
    faust_cli.main(["worker", "--help"], prog_name="studystream")


def run_worker(settings: Settings, args: list[str], datadir: Path | None = None, log_level: str | None = None) -> None:
    if any(arg in ("-h", "--help") for arg in args):
        _help()
        return
    from adapters.control import read_control
    from app.stream_app import build_worker
    from domain.errors import ConfigurationError
    from domain.log_levels import parse_level

    faust_level, args = split_faust_log_level(args)
    try:
        level = parse_level(log_level or faust_level or settings.log_level)
    except ValueError as exc:
        raise ConfigurationError(f"--log-level: {exc}") from None
    worker = prepare_worker(settings, lambda: build_worker(settings, read_control(settings)), level)
    datadir = datadir or worker_datadir(settings, args)
    datadir.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    log.info(
        "worker starting: group %s, broker %s, web port %d, tables in %s",
        worker.app.conf.id, settings.broker_url, web_port_from_args(args, settings.web_port), datadir,
    )  # fmt: skip
    # --quiet: no banner table; --loglevel info: no start-up spinner (levels come from dict_config).
    sys.argv = ["studystream", "--datadir", str(datadir), "--quiet", "worker", "--loglevel", "info", *args]
    try:
        worker.app.main()
    finally:
        log.info("worker stopped")


_built: Any = None


def __getattr__(name: str) -> Any:
    # `faust -A app.worker:app`: the app is built when Faust asks for it, not when the module is imported.
    global _built
    if name != "app":
        raise AttributeError(name)
    if _built is None:
        from adapters.control import read_control
        from app.settings import get_settings
        from app.stream_app import build_worker

        settings = get_settings()
        _built = for_faust_cli(settings, lambda: build_worker(settings, read_control(settings)))
    return _built.app
