"""One logging setup for every StudyStream process: the receiver, the worker (through Faust) and the tools.

One line per record, on standard error, in one of two formats (``STUDYSTREAM_LOG_FORMAT``):

* ``text``: ``2026-12-01T16:38:08.698+00:00 INFO    receiver[4242] association CT1 from ... accepted``
* ``json``: one object per line with ``timestamp``, ``level``, ``component``, ``logger``, ``pid``,
  ``message`` and every field the call passed with ``extra=`` (``study_uid``, ``stage``, ``duration_ms``).

StudyStream's own loggers (``studystream.*``) log at ``log_level`` (``--log-level``); every library
(Faust, mode, aiokafka, pynetdicom, httpx, ...) at WARNING unless ``STUDYSTREAM_LOG_LEVELS`` names
it. The component is the part of StudyStream that logged (receiver, aggregator, uploader, web,
worker) or, for a library, the library's name.

The Faust worker configures logging itself (mode clears the root logger's handlers when it starts);
:func:`dict_config` is handed to it as the app's ``logging_config`` so it installs this same setup.
"""

from __future__ import annotations

import logging
import logging.config
from datetime import datetime
from typing import Any, Literal

from pythonjsonlogger.json import JsonFormatter

from app.settings import Settings

Role = Literal["receiver", "worker", "studystream"]
ROOT_LOGGER = "studystream"
# Libraries StudyStream runs on; all at WARNING by default (unknown loggers inherit the root's WARNING).
LIBRARIES = (
    "faust",
    "mode",
    "aiokafka",
    "kafka",
    "pynetdicom",
    "pydicom",
    "httpx",
    "httpcore",
    "urllib3",
    "aiohttp",
    "asyncio",
    "fhirclient",
)
# StudyStream loggers whose lines belong to a named part of the pipeline (the longest prefix wins).
_COMPONENTS = {
    "studystream.scp": "receiver",
    "studystream.agents.aggregator": "aggregator",
    "studystream.agents.uploader": "uploader",
    "studystream.agents.fhir_writer": "uploader",
    "studystream.web": "web",
}
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(component)s[%(process)d] %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(component)s %(name)s %(process)d %(message)s"
JSON_RENAMES = {"asctime": "timestamp", "levelname": "level", "name": "logger", "process": "pid"}


def component_of(logger_name: str, role: str) -> str:
    """The component of a logger: ``studystream.agents.uploader`` → ``uploader``, another StudyStream
    logger → ``role``, a library's (``aiokafka.conn``) → the library (``aiokafka``)."""
    if logger_name == ROOT_LOGGER or logger_name.startswith(f"{ROOT_LOGGER}."):
        for prefix, component in sorted(_COMPONENTS.items(), key=lambda item: -len(item[0])):
            if logger_name == prefix or logger_name.startswith(f"{prefix}."):
                return component
        return role
    return logger_name.split(".", 1)[0] or role


class ComponentFilter(logging.Filter):
    """Sets ``record.component`` (unless the call passed one) on every record a handler writes."""

    def __init__(self, role: str = "studystream") -> None:
        super().__init__()
        self.role = role
        self._known: dict[str, str] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "component", None):
            component = self._known.get(record.name)
            if component is None:
                component = self._known[record.name] = component_of(record.name, self.role)
            record.component = component
        return True


def _iso_time(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds")


class TextFormatter(logging.Formatter):
    """``<ISO time> <LEVEL> <component>[<pid>] <message>``."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _iso_time(record)


class JsonLineFormatter(JsonFormatter):
    """One JSON object per record (python-json-logger): the fixed fields, then the call's ``extra`` fields."""

    def __init__(self) -> None:
        super().__init__(JSON_FIELDS, rename_fields=JSON_RENAMES)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _iso_time(record)


def _formatter(log_format: str) -> logging.Formatter:
    return JsonLineFormatter() if log_format == "json" else TextFormatter()


def dict_config(settings: Settings, role: Role, level: str | None = None) -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` of this setup: ``level`` (default ``settings.log_level``) for
    StudyStream's loggers, WARNING for the libraries, ``settings.log_levels`` on top."""
    loggers: dict[str, dict[str, Any]] = {name: {"level": "WARNING"} for name in LIBRARIES}
    loggers[ROOT_LOGGER] = {"level": level or settings.log_level}
    for name, override in settings.log_level_overrides.items():
        loggers[name] = {"level": override}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"component": {"()": ComponentFilter, "role": role}},
        "formatters": {"studystream": {"()": _formatter, "log_format": settings.log_format}},
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "studystream",
                "filters": ["component"],
            }
        },
        "root": {"level": "WARNING", "handlers": ["console"]},
        "loggers": loggers,
    }


def configure_logging(settings: Settings, role: Role, level: str | None = None) -> None:
    """Install this setup in the current process (replacing any handler the root logger had)."""
    logging.config.dictConfig(dict_config(settings, role, level))
