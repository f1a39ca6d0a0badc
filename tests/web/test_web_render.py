"""web.render and web.html: rows and pages from study state (pure, no worker)."""

from __future__ import annotations

import dataclasses

from msgspec.structs import replace

from domain.study_state import InstanceInfo, PatientInfo, SeriesInfo, StudyHeader, StudyInfo, StudyStatus
from domain.upload import UploadOutcome, UploadStatus
from web import html, render

NOW = 1_800_000_000.0
OPTIONS = render.ViewOptions(show_patient_data=False, quiet_period=30.0)
UID = "1.2.3.4"


def header(**changes: object) -> StudyHeader:
    base = StudyHeader(
        study=StudyInfo(uid=UID, accession_number="ACC1", description="CT <b>CHEST</b>", date="20240501"),
        patient=PatientInfo(id="PID77", issuer="HOSP", name="Doe^Jane", birth_date="19700101", sex="F"),
        revision=1,
        instance_count=3,
        series_count=2,
        first_received="2027-01-15T07:59:00.000Z",
        last_received="2027-01-15T08:00:00.000Z",
        last_wall_time=NOW - 10,
    )
    return replace(base, **changes)


def outcome(status: UploadStatus, revision: int, published_revision: int) -> UploadOutcome:
    return UploadOutcome(
        study_uid=UID, revision=revision, status=status, published_revision=published_revision,
        resource_url="http://fhir/ImagingStudy/9", reason="HTTP 422 bad",
    )  # fmt: skip


def test_status_combines_the_aggregator_and_the_uploader() -> None:
    published = header(status=StudyStatus.PUBLISHED, published_revision=1)
    assert render.display_status(header(), None) is render.DisplayStatus.RECEIVING
    assert render.display_status(published, None) is render.DisplayStatus.READY
    assert render.display_status(published, outcome(UploadStatus.RETRYING, 1, 0)) is render.DisplayStatus.READY
    assert render.display_status(published, outcome(UploadStatus.PUBLISHED, 1, 1)) is render.DisplayStatus.PUBLISHED
    assert render.display_status(published, outcome(UploadStatus.FAILED, 1, 0)) is render.DisplayStatus.FAILED
    assert render.display_status(header(status=StudyStatus.FAILED), None) is render.DisplayStatus.FAILED
    # Revision 2 was emitted, the server still has revision 1 only: ready again, not published.
    second = header(status=StudyStatus.PUBLISHED, revision=2, published_revision=2)
    assert render.display_status(second, outcome(UploadStatus.PUBLISHED, 1, 1)) is render.DisplayStatus.READY


def test_row_has_counts_clocks_and_countdown_but_no_patient_unless_shown() -> None:
    row = render.study_row(header(), None, ["CT", "", "SR", "CT"], NOW, OPTIONS)
    assert (row["status"], row["series_count"], row["instance_count"]) == ("receiving", 2, 3)
    assert row["modalities"] == ["CT", "SR"]
    assert row["quiet_remaining_seconds"] == 20.0
    assert row["age_seconds"] == 60.0
    assert row["patient"] is None and "Doe" not in repr(row) and "PID77" not in repr(row)
    shown = render.study_row(header(), None, [], NOW, dataclasses.replace(OPTIONS, show_patient_data=True))
    assert shown["patient"] == {
        "name": "Doe^Jane",
        "id": "PID77",
        "issuer": "HOSP",
        "birth_date": "19700101",
        "sex": "F",
    }


def test_countdown_is_zero_when_due_and_absent_once_published() -> None:
    assert render.quiet_remaining(header(last_wall_time=NOW - 99), NOW, 30.0) == 0.0
    assert render.quiet_remaining(header(status=StudyStatus.PUBLISHED), NOW, 30.0) is None


def test_detail_orders_series_and_counts_instances_per_series_within_the_limit() -> None:
    series = [
        SeriesInfo(uid="1.2.3.4.2", number=2, modality="SR"),
        SeriesInfo(uid="1.2.3.4.1", number=1, modality="CT"),
    ]
    instances = [
        InstanceInfo(uid=f"1.2.3.4.1.{n}", series_uid="1.2.3.4.1", sop_class_uid="1.2", number=n) for n in (2, 1)
    ] + [InstanceInfo(uid="1.2.3.4.2.1", series_uid="1.2.3.4.2", sop_class_uid="1.2", number=1)]
    detail = render.study_detail(header(), None, series, instances, NOW, OPTIONS, instance_limit=2)
    assert [(s["number"], s["instance_count"]) for s in detail["series"]] == [(1, 2), (2, 1)]
    assert [i["sop_instance_uid"] for i in detail["instances"]] == ["1.2.3.4.1.1", "1.2.3.4.1.2"]
    assert detail["instances_truncated"] is True


def test_listings_merge_to_one_row_per_study_and_filter_by_status() -> None:
    old = render.study_row(header(), None, [], NOW, OPTIONS)
    newer = render.study_row(header(revision=2), None, [], NOW, OPTIONS)
    other = render.study_row(
        header(study=StudyInfo(uid="1.9"), status=StudyStatus.FAILED, last_received="2027-01-15T09:00:00.000Z"),
        None, [], NOW, OPTIONS,
    )  # fmt: skip
    merged = render.merge_listings([[old], [newer, other]])
    assert sorted((r["study_uid"], r["revision"]) for r in merged) == [("1.2.3.4", 2), ("1.9", 1)]
    assert [r["study_uid"] for r in render.filter_and_sort(merged, None, 10)] == ["1.9", "1.2.3.4"]
    assert [r["study_uid"] for r in render.filter_and_sort(merged, "failed", 10)] == ["1.9"]
    assert render.filter_and_sort(merged, None, 1) == [other]
    assert render.status_counts(merged) == {"receiving": 1, "ready": 0, "published": 0, "failed": 1, "conflict": 0}
    assert render.parse_status("published") == "published" and render.parse_status("bogus") is None


def test_uid_check_rejects_what_cannot_be_a_study_uid() -> None:
    assert render.is_study_uid("1.2.840.10008")
    assert not any(map(render.is_study_uid, ["", "1.2.x", "<script>", "1" * 65, "é"]))


def test_pages_escape_values_and_hide_the_patient() -> None:
    outcome_row = outcome(UploadStatus.PUBLISHED, 1, 1)
    row = render.study_row(header(status=StudyStatus.PUBLISHED), outcome_row, ["CT"], NOW, OPTIONS)
    page = html.index_page([row], render.status_counts([row]), None, ["worker x did not answer"], 5, "now")
    assert "CT &lt;b&gt;CHEST&lt;/b&gt;" in page and "<b>CHEST" not in page
    assert 'data-status="published"' in page and 'href="http://fhir/ImagingStudy/9"' in page
    assert '<meta http-equiv="refresh" content="5">' in page and "worker x did not answer" in page
    assert "Doe" not in page and "PID77" not in page and ">hidden<" in page
    detail = render.study_detail(header(), None, [], [], NOW, OPTIONS, 10)
    assert "Doe" not in html.detail_page(detail, 0) and "refresh" not in html.detail_page(detail, 0)


def test_countdown_rounds_up_and_says_due_at_zero() -> None:
    assert [html.quiet_cell(v) for v in (None, 0.0, 0.2, 61.5)] == ["", "due", "1s left", "1m 2s left"]


def test_durations_read_naturally() -> None:
    assert [html.duration(s) for s in (None, 4.4, 95, 7322, 90000)] == ["", "4s", "1m 35s", "2h 2m", "1d 1h"]
