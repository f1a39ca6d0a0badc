"""The one root exception of StudyStream and its direct children."""

from __future__ import annotations


class StudyStreamError(Exception):
    """Root of every error StudyStream raises on purpose."""


class ConfigurationError(StudyStreamError):
    """A setting is missing or inconsistent."""


class InvalidEventError(StudyStreamError):
    """A message on a StudyStream topic cannot be decoded or lacks a required field (a poison message)."""


class StackError(StudyStreamError):
    """The local Kafka/HAPI stack could not be fetched, started, or stopped."""
