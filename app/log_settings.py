"""The logging settings every StudyStream process reads (receiver, worker, tools).

A base of :class:`app.settings.Settings`, kept apart like :mod:`app.dicom_settings`; every process
still reads the one :class:`app.settings.Settings`, and the README table lists these fields too.
:mod:`adapters.log_setup` applies them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings

from app.dicom_settings import SETTINGS_CONFIG
from domain.log_levels import format_log_levels, parse_level, parse_log_levels


class LogSettings(BaseSettings):
    """Logging. Field ``x`` is read from ``STUDYSTREAM_X``."""

    model_config = SETTINGS_CONFIG

    # --- Logging -----------------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Level of StudyStream's own log lines (`--log-level` of a command overrides it)."
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="`text`: one line per event (time, level, component[pid], message); `json`: one JSON object "
        "per line (timestamp, level, component, logger, pid, message and the event's fields such as study_uid).",
    )
    log_levels: str = Field(
        "",
        description="Levels of particular loggers, `logger=LEVEL` comma-separated (`faust=INFO,aiokafka=DEBUG`); "
        "every library (faust, mode, aiokafka, pynetdicom, httpx, ...) logs at WARNING otherwise. httpx's INFO "
        "lines quote FHIR search URLs, which hold patient identifiers.",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_name(cls, value: object) -> object:
        return parse_level(value) if isinstance(value, str) else value

    @field_validator("log_levels")
    @classmethod
    def _log_levels_parse(cls, value: str) -> str:
        return format_log_levels(parse_log_levels(value))  # ValueError names the bad entry

    @property
    def log_level_overrides(self) -> dict[str, str]:
        """``log_levels`` as ``{logger: LEVEL}``."""
        return parse_log_levels(self.log_levels)
