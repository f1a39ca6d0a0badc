"""Errors of the DICOM sender."""

from __future__ import annotations

from domain.errors import StudyStreamError


class SenderError(StudyStreamError):
    """The sender could not do what it was asked."""


class AssociationFailed(SenderError):
    """No association could be established (refused, rejected, aborted or timed out).

    ``permanent`` is true when retrying cannot help (a permanent A-ASSOCIATE-RJ, or every proposed
    presentation context rejected).
    """

    def __init__(self, reason: str, permanent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
