"""web.dlq: how a dead-letter record is shown (pure, no broker)."""

from __future__ import annotations

from domain.dead_letters import DeadLetter, Source, build_headers
from web.dlq import dead_letter_row, newest


def test_row_names_the_failure_without_the_original_value_or_the_servers_diagnostics() -> None:
    letter = DeadLetter("uploader", "fhir_rejected", "HTTP 422 (error/processing)", "PID-42 is not valid", 422, b"{}")
    headers = build_headers(letter, Source("imaging.study.ready", 3, 17), "2027-01-15T08:00:00.000Z", [("x", b"y")])
    row = dead_letter_row(3, 17, 1_800_000_000_000, b"1.2.3", headers, 512)
    assert row == {
        "partition": 3,
        "offset": 17,
        "timestamp": "2027-01-15T08:00:00.000Z",
        "study_uid": "1.2.3",
        "value_bytes": 512,
        "has_operation_outcome": True,
        "stage": "uploader",
        "reason": "fhir_rejected",
        "message": "HTTP 422 (error/processing)",
        "source": "imaging.study.ready[3]@17",
        "source_topic": "imaging.study.ready",
        "dead_lettered_at": "2027-01-15T08:00:00.000Z",
        "http_status": "422",
    }
    assert "PID-42" not in str(row)
    shown = dead_letter_row(3, 17, None, b"1.2.3", headers, 512, show_patient_data=True)
    assert shown["detail"] == "PID-42 is not valid"
    bare = dead_letter_row(0, 0, None, None, [], 0)
    assert (bare["timestamp"], bare["study_uid"], bare["reason"], bare["has_operation_outcome"]) == ("", "", "", False)


def test_newest_keeps_the_most_recent_across_partitions() -> None:
    rows = [{"timestamp": f"2027-01-15T08:00:0{i}.000Z", "partition": i % 2, "offset": i} for i in range(6)]
    assert [r["offset"] for r in newest(rows, 3)] == [5, 4, 3]
