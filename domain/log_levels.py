"""``STUDYSTREAM_LOG_LEVELS``: per-logger level overrides such as ``faust=INFO,aiokafka=DEBUG``.

The value comes from the environment (a trust boundary), so it is parsed strictly: every entry is
``logger=LEVEL`` with a dotted ASCII logger name and one of the standard level names; anything else
is refused with the entry named, before the process starts.
"""

from __future__ import annotations

import re

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_ALIASES = {"WARN": "WARNING", "FATAL": "CRITICAL"}
_LOGGER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*", re.ASCII)
_MAX_NAME = 200
EXAMPLE = "faust=INFO,aiokafka=DEBUG"


def _shown(text: str) -> str:
    """An entry as an error message quotes it: repr'd (no control characters), at most 60 characters."""
    return repr(text if len(text) <= 60 else f"{text[:57]}...")


def parse_level(text: str) -> str:
    """A level name, case-insensitive (``warn`` → ``WARNING``); ValueError for anything else."""
    level = text.strip().upper()
    level = _ALIASES.get(level, level)
    if level not in LEVELS:
        raise ValueError(f"{_shown(text)} is not a log level (one of {', '.join(LEVELS)})")
    return level


def parse_log_levels(text: str) -> dict[str, str]:
    """``"faust=INFO, aiokafka=debug"`` → ``{"faust": "INFO", "aiokafka": "DEBUG"}``; ``""`` → ``{}``.

    ValueError names the first bad entry: no ``=``, an empty or malformed logger name, an unknown
    level, an empty entry (``a=INFO,,b=INFO``) or a logger named twice.
    """
    if not text.strip():
        return {}
    levels: dict[str, str] = {}
    for entry in text.split(","):
        name, equals, level = entry.partition("=")
        name = name.strip()
        if not equals:
            raise ValueError(f"log level entry {_shown(entry)}: expected logger=LEVEL, e.g. {EXAMPLE}")
        if len(name) > _MAX_NAME or not _LOGGER_NAME.fullmatch(name):
            raise ValueError(f"log level entry {_shown(entry)}: {_shown(name)} is not a logger name (e.g. aiokafka)")
        if name in levels:
            raise ValueError(f"log level entry {_shown(entry)}: logger {name} is named twice")
        try:
            levels[name] = parse_level(level)
        except ValueError as exc:
            raise ValueError(f"log level entry {_shown(entry)}: {exc}") from None
    return levels


def format_log_levels(levels: dict[str, str]) -> str:
    """The inverse of :func:`parse_log_levels` (canonical spelling)."""
    return ",".join(f"{name}={level}" for name, level in levels.items())
