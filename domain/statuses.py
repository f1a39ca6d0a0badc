"""DICOM statuses StudyStream answers and reads, and the one table from a refusal's reason to its status.

The receiver refuses a C-STORE by raising :class:`StoreRefused` with a reason name; the reason is what
is counted (``studystream_receiver_failures_total{reason}``) and :data:`REFUSAL_STATUS` says which status
the sender gets. The sender (``scu/``) reads the same table back to explain a failure.
"""

from __future__ import annotations

from domain.errors import StudyStreamError

SUCCESS = 0x0000
# Storage Service Class (PS3.4 B.2.3)
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
# Storage Commitment, N-ACTION (PS3.7 10.1.4.1.10)
NO_SUCH_ACTION_TYPE = 0x0123
INVALID_ARGUMENT_VALUE = 0x0115
PROCESSING_FAILURE = 0x0110
NO_SUCH_SOP_CLASS = 0x0118
# DIMSE, any service
UNRECOGNIZED_OPERATION = 0x0211
SOP_CLASS_NOT_SUPPORTED = 0x0122

# Refusal reason → C-STORE status. Every reason the receiver counts is listed here.
REFUSAL_STATUS: dict[str, int] = {
    "unparseable": 0xC210,  # Error: cannot understand (the dataset does not decode)
    "missing_uid": DATASET_DOES_NOT_MATCH_SOP_CLASS,
    "malformed_uid": DATASET_DOES_NOT_MATCH_SOP_CLASS,
    "sop_class_mismatch": DATASET_DOES_NOT_MATCH_SOP_CLASS,
    "sop_instance_mismatch": DATASET_DOES_NOT_MATCH_SOP_CLASS,
    "storage_error": OUT_OF_RESOURCES,
    "outbox_error": OUT_OF_RESOURCES,
    "too_large": OUT_OF_RESOURCES,  # past receiver_max_dataset_bytes
    "inflates_too_large": OUT_OF_RESOURCES,  # deflated, past receiver_max_inflated_bytes
    "disk_full": OUT_OF_RESOURCES,  # free space below receiver_min_free_bytes
    "event_too_large": OUT_OF_RESOURCES,
    # DICOMweb STOW-RS only (PS3.18 I.2.2 failure reasons)
    "study_mismatch": DATASET_DOES_NOT_MATCH_SOP_CLASS,  # not the study the request's URL names
    "not_dicom": CANNOT_UNDERSTAND,  # a part that is not application/dicom (or not a Part 10 file)
    "malformed_request": CANNOT_UNDERSTAND,  # the multipart body broke off or is malformed after this point
}

REASON_OF_STATUS = {
    0xC210: "the receiver cannot read the dataset",
    DATASET_DOES_NOT_MATCH_SOP_CLASS: "the dataset's UIDs are missing, malformed or contradict the request",
    OUT_OF_RESOURCES: "the receiver is out of resources (storage, size limits): try again later",
}


class StoreRefused(StudyStreamError):
    """A C-STORE the receiver must refuse; ``reason`` is a key of :data:`REFUSAL_STATUS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REFUSAL_STATUS:
            raise ValueError(f"unknown refusal reason {reason!r}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

    @property
    def status(self) -> int:
        return REFUSAL_STATUS[self.reason]


def describe(status: int) -> str:
    """A person's words for a C-STORE status (the sender's reports)."""
    return REASON_OF_STATUS.get(status, "")
