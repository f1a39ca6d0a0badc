"""web.dlq: how a dead-letter record is shown (pure, no broker)."""

from __future__ import annotations

from web.dlq import dead_letter_row, newest


def test_row_names_the_failure_without_the_original_value() -> None:
    headers = [
        ("studystream-reason", b"HTTP 422 bad identifier"),
        ("studystream-source", b"imaging.study.ready[3]@17"),
        ("studystream-stage", b"uploader"),
        ("studystream-http-status", b"422"),
        ("studystream-operation-outcome", b'{"resourceType":"OperationOutcome"}'),
        ("other", b"ignored"),
    ]
    row = dead_letter_row(3, 17, 1_800_000_000_000, b"1.2.3", headers, 512)
    assert row == {
        "partition": 3,
        "offset": 17,
        "timestamp": "2027-01-15T08:00:00.000Z",
        "study_uid": "1.2.3",
        "value_bytes": 512,
        "has_operation_outcome": True,
        "reason": "HTTP 422 bad identifier",
        "source": "imaging.study.ready[3]@17",
        "stage": "uploader",
        "http_status": "422",
    }
    bare = dead_letter_row(0, 0, None, None, [], 0)
    assert (bare["timestamp"], bare["study_uid"], bare["reason"], bare["has_operation_outcome"]) == ("", "", "", False)


def test_newest_keeps_the_most_recent_across_partitions() -> None:
    rows = [{"timestamp": f"2027-01-15T08:00:0{i}.000Z", "partition": i % 2, "offset": i} for i in range(6)]
    assert [r["offset"] for r in newest(rows, 3)] == [5, 4, 3]
