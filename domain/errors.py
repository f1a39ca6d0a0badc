"""The one root exception of StudyStream and its direct children.

The error policy (:mod:`domain.failures`) decides what a failure means for the message being handled
from the class alone: a record's own defect is dead-lettered, an infrastructure failure stops the
worker without committing the message.
"""

from __future__ import annotations


class StudyStreamError(Exception):
    """Root of every error StudyStream raises on purpose."""


class ConfigurationError(StudyStreamError):
    """A setting is missing or inconsistent."""


class InvalidRecordError(StudyStreamError):
    """A record (a Kafka message, or a row it led to) cannot be decoded or breaks a rule of its kind.

    ``reason`` is a short, metric-friendly name (``not_json``, ``invalid_field``, ...); the message
    says what is wrong without quoting the record's values (they may be patient data).
    """

    def __init__(self, message: str, reason: str = "invalid_record") -> None:
        super().__init__(message)
        self.reason = reason


# The name every module used before the error policy existed.
InvalidEventError = InvalidRecordError


class RejectedError(StudyStreamError):
    """A downstream system refused a record for good (a FHIR 4xx with an OperationOutcome, say).

    ``detail`` may quote patient data (servers echo what they were sent): it goes to the dead letter,
    never to a log line.
    """

    def __init__(
        self, message: str, reason: str, detail: str = "", http_status: int = 0, operation_outcome: bytes = b""
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.detail = detail
        self.http_status = http_status
        self.operation_outcome = operation_outcome


class InfrastructureError(StudyStreamError):
    """Something the record cannot help: the broker, the disk, the table store. The message is not committed."""
