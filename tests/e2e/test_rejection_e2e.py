"""IOCM rejection notes end to end: a PACS rejects part of a published study, then the rest, by sending
Key Object Selection documents to the receiver; the ImagingStudy on HAPI follows (one resource throughout)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from scu import synth
from tests.conftest import wait_for
from tests.e2e.conftest import E2E, studies_in


def series_listed(resource: dict[str, Any]) -> set[str]:
    return {series["uid"] for series in resource.get("series", [])}


@pytest.mark.parametrize("e2e", [{"workers": 1, "quiet_period": 3.0}], indirect=True)
def test_rejection_notes_remove_instances_from_the_imaging_study_then_mark_the_emptied_study_in_error(
    e2e: E2E, tmp_path: Path
) -> None:
    files = synth.write_studies(tmp_path / "in", studies=1, series=2, instances=2)
    (study,) = studies_in(files).values()
    e2e.remember({study.uid: study})
    assert e2e.send(*files)["stored"] == 4
    first = e2e.wait_study(study, timeout=120)
    assert first["status"] == "available" and len(first["series"]) == 2

    rejected_series, kept_series = sorted(study.series)
    rejected = [h for h in study.headers if h.SeriesInstanceUID == rejected_series]
    kept = [h for h in study.headers if h.SeriesInstanceUID == kept_series]
    quality = synth.write_dataset(synth.rejection_note(rejected, "113001"), tmp_path / "notes")
    assert e2e.send(quality, name="quality-note")["stored"] == 1

    def with_instances(count: int, status: str) -> dict[str, Any] | None:
        found = e2e.fhir.studies(study.uid)
        assert len(found) <= 1, "a rejection must update the ImagingStudy, never add one"
        if found and found[0]["numberOfInstances"] == count and found[0]["status"] == status:
            return found[0]
        return None

    second = wait_for(lambda: with_instances(2, "available"), 120, interval=0.5, what="the quality rejection on FHIR")
    assert second["id"] == first["id"]
    assert series_listed(second) == {kept_series}, "the emptied series and the note itself are not listed"
    assert second["numberOfSeries"] == 1
    assert {i["uid"] for i in second["series"][0]["instance"]} == {h.SOPInstanceUID for h in kept}

    safety = synth.write_dataset(synth.rejection_note(kept, "113037"), tmp_path / "notes")
    assert e2e.send(safety, name="safety-note")["stored"] == 1
    third = wait_for(lambda: with_instances(0, "entered-in-error"), 120, interval=0.5, what="the emptied study")
    assert third["id"] == first["id"] and "series" not in third and third["numberOfSeries"] == 0

    row = e2e.web_studies()[study.uid]
    assert [c["code"] for c in row["rejections"]["codes"]] == ["113001", "113037"]
    logs = "".join(p.read_text(errors="replace") for p in e2e.log_files() if p.suffix == ".log")
    assert f"study {study.uid}: rejection note" in logs
    e2e.assert_no_phi_in_logs()
