"""Factories of StudyReady records for the uploader's tests."""

from __future__ import annotations

from domain.events import CodedValue
from domain.ready import ReadyInstance, ReadySeries, StudyReady
from domain.study import PatientInfo, SeriesInfo, StudyInfo
from tests.conftest import unique_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.11"


def make_ready(
    study_uid: str | None = None,
    *,
    patient_id: str = "PID-1",
    issuer: str = "HOSP",
    name: str = "Doe^Jane",
    revision: int = 1,
    series: tuple[tuple[str, str, int], ...] = (("CT", "CHEST", 2),),
    study_time: str = "101500",
    timezone_offset: str = "+0200",
) -> StudyReady:
    """A study with one series per ``(modality, body part, instance count)``."""
    uid = study_uid or unique_uid()
    ready_series = []
    for index, (modality, body_part, count) in enumerate(series, start=1):
        series_uid = f"{uid}.{index}"
        sop_class = SR_STORAGE if modality == "SR" else CT_IMAGE_STORAGE
        ready_series.append(
            ReadySeries(
                info=SeriesInfo(
                    uid=series_uid,
                    number=index,
                    modality=modality,
                    description=f"Series {index}",
                    date="20240501",
                    time="1016",
                    body_part=body_part,
                    laterality="L" if body_part == "KNEE" else "",
                    performing_physician="House^Greg",
                    operators_name="Op^Olga",
                    manufacturer="ACME",
                    model="Scanner 1",
                ),
                instances=tuple(
                    ReadyInstance(f"{series_uid}.{n}", sop_class, n, "ORIGINAL\\PRIMARY\\AXIAL")
                    for n in range(1, count + 1)
                ),
            )
        )
    return StudyReady(
        study=StudyInfo(
            uid=uid,
            date="20240501",
            time=study_time,
            timezone_offset=timezone_offset,
            description="CT CHEST",
            accession_number="ACC1",
            accession_issuer="1.2.3.4",
            referring_physician="Referrer^Ray",
            procedure_codes=(CodedValue("71250", "C4", "CT chest w/o contrast"),),
            institution="Test Hospital",
        ),
        patient=PatientInfo(id=patient_id, issuer=issuer, name=name, birth_date="19700102", sex="F"),
        series=tuple(ready_series),
        revision=revision,
        first_received="2024-05-01T08:15:00.000Z",
        last_received="2024-05-01T08:16:00.000Z",
        ready_at="2024-05-01T08:16:30.000Z",
    )
