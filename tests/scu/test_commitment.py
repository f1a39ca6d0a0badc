"""Storage Commitment request and report reading: no network."""

from __future__ import annotations

from pydicom.dataset import Dataset

from scu import commitment


def test_request_names_every_instance_under_one_transaction() -> None:
    ds = commitment.build_request("1.2.3", [("1.2.840.10008.5.1.4.1.1.2", "9.1"), ("1.2.840.10008.5.1.4.1.1.4", "9.2")])
    assert ds.TransactionUID == "1.2.3"
    assert [(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID) for i in ds.ReferencedSOPSequence] == [
        ("1.2.840.10008.5.1.4.1.1.2", "9.1"),
        ("1.2.840.10008.5.1.4.1.1.4", "9.2"),
    ]


def test_report_with_failures_is_never_read_as_success() -> None:
    info = Dataset()
    info.TransactionUID = "1.2.3"
    failed = Dataset()
    failed.ReferencedSOPInstanceUID = "9.1"
    info.FailedSOPSequence = [failed]
    report = commitment.read_report(commitment.EVENT_SOME_FAILED, info)
    assert report.describe() == "commitment failed for 1 instance(s)"
    assert commitment.read_report(commitment.EVENT_SOME_FAILED, None).failed == 1
    assert commitment.read_report(commitment.EVENT_ALL_COMMITTED, info).failed == 1


def test_waiter_returns_the_report_for_its_transaction_or_none_after_timeout() -> None:
    waiter = commitment.ReportWaiter()
    assert waiter.wait("1.2.3", 0.01) is None
    waiter.deliver(commitment.CommitmentReport("1.2.3", 2, 0))
    report = waiter.wait("1.2.3", 0.01)
    assert report is not None and report.describe() == "committed"
