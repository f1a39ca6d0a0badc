"""Storage Commitment Push Model (PS3.4 Annex J), requester side: what to ask and how to read the answer.

The N-ACTION request names every instance the sender stored in a study under one Transaction UID. The
peer answers the N-ACTION at once and reports the outcome later with an N-EVENT-REPORT, which the sender
accepts when it arrives on the same association within ``sender_commitment_timeout``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

from pydicom.dataset import Dataset

COMMIT_REQUEST_ACTION = 1
EVENT_ALL_COMMITTED = 1
EVENT_SOME_FAILED = 2


@dataclass(frozen=True, slots=True)
class CommitmentReport:
    transaction_uid: str
    committed: int
    failed: int

    def describe(self) -> str:
        return "committed" if self.failed == 0 else f"commitment failed for {self.failed} instance(s)"


def build_request(transaction_uid: str, instances: Iterable[tuple[str, str]]) -> Dataset:
    """The N-ACTION Action Information for (SOP Class UID, SOP Instance UID) pairs."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    items = []
    for sop_class, sop_instance in instances:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    ds.ReferencedSOPSequence = items
    return ds


def read_report(event_type: int, info: Dataset | None) -> CommitmentReport:
    """The outcome an N-EVENT-REPORT carries (event 1: all committed, 2: some failed)."""
    info = info if info is not None else Dataset()
    committed = len(info.get("ReferencedSOPSequence", []))
    failed = len(info.get("FailedSOPSequence", []))
    if event_type == EVENT_SOME_FAILED and failed == 0:
        failed = 1  # the peer said "failures" without listing them: never read that as success
    return CommitmentReport(str(info.get("TransactionUID", "")), committed, failed)


class ReportWaiter:
    """Where the association's N-EVENT-REPORT handler leaves the report for the sending thread."""

    def __init__(self) -> None:
        self._arrived = threading.Event()
        self._reports: list[CommitmentReport] = []

    def deliver(self, report: CommitmentReport) -> None:
        self._reports.append(report)
        self._arrived.set()

    def wait(self, transaction_uid: str, timeout: float) -> CommitmentReport | None:
        if not self._arrived.wait(timeout):
            return None
        for report in self._reports:
            if report.transaction_uid in ("", transaction_uid):
                return report
        return None
