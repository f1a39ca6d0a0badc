"""Factories of the records every suite needs: instance events as the receiver publishes them, studies of
them, and ``imaging.study.ready`` records as the aggregator emits them. No I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from msgspec.structs import replace

from domain.events import CodedValue, InstanceEvent
from domain.ready import ReadyInstance, ReadySeries, StudyReady
from domain.study_state import PatientInfo, StudyInfo
from tests.conftest import unique_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.11"


def make_event(
    study_uid: str, series_uid: str, number: int, *, series_number: int = 1, **overrides: object
) -> InstanceEvent:
    """An instance event as the receiver would publish it (synthetic patient, CT)."""
    event = InstanceEvent(
        study_uid=study_uid,
        series_uid=series_uid,
        sop_instance_uid=f"{series_uid}.{number}",
        sop_class_uid=CT_IMAGE_STORAGE,
        instance_number=number,
        series_number=series_number,
        modality="CT",
        study_date="20240501",
        study_time="101500",
        study_description="CT CHEST",
        accession_number="ACC" + study_uid[-6:],
        accession_issuer="urn:oid:1.2.3",
        referring_physician="Referrer^Ray",
        procedure_codes=(CodedValue("71250", "CPT", "CT chest"),),
        institution="Test Hospital",
        patient_id="PID" + study_uid[-6:],
        issuer_of_patient_id="HOSP",
        patient_name="Test^Patient",
        birth_date="19700101",
        sex="F",
        series_description=f"Series {series_number}",
        body_part_examined="CHEST",
        manufacturer="ACME",
        model="Scanner 1",
        received_at=datetime.now(UTC).isoformat(),
    )
    return replace(event, **overrides) if overrides else event


@dataclass
class SyntheticStudy:
    """A study of ``series`` series × ``per_series`` instances, each SOP UID derived from its series UID."""

    series: int
    per_series: int
    uid: str = field(default_factory=unique_uid)

    def series_uid(self, index: int) -> str:
        return f"{self.uid}.{index + 1}"

    def events(self) -> list[InstanceEvent]:
        return [
            make_event(self.uid, self.series_uid(s), n + 1, series_number=s + 1)
            for s in range(self.series)
            for n in range(self.per_series)
        ]

    @property
    def instance_count(self) -> int:
        return self.series * self.per_series


def interleave(*lists: Sequence[InstanceEvent]) -> list[InstanceEvent]:
    out: list[InstanceEvent] = []
    for i in range(max(len(seq) for seq in lists)):
        out.extend(seq[i] for seq in lists if i < len(seq))
    return out


def make_ready(
    study_uid: str | None = None,
    *,
    patient_id: str = "PID-1",
    issuer: str = "HOSP",
    name: str = "Doe^Jane",
    revision: int = 1,
    generation: int = 1,
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
        instances = tuple(
            ReadyInstance(f"{series_uid}.{n}", sop_class, n, "ORIGINAL\\PRIMARY\\AXIAL") for n in range(1, count + 1)
        )
        ready_series.append(
            ReadySeries(
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
                number_of_instances=len(instances),
                instances=instances,
            )
        )
    return with_counts(
        StudyReady(
            study_uid=uid,
            revision=revision,
            generation=generation,
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
            first_received="2024-05-01T08:15:00.000Z",
            last_received="2024-05-01T08:16:00.000Z",
            ready_at="2024-05-01T08:16:30.000Z",
        )
    )


def with_counts(record: StudyReady) -> StudyReady:
    """``record`` with its counts and modalities computed from its series (as the aggregator writes them)."""
    series = tuple(replace(s, number_of_instances=len(s.instances)) for s in record.series)
    return replace(
        record,
        series=series,
        number_of_series=len(series),
        number_of_instances=sum(len(s.instances) for s in series),
        modalities=tuple(dict.fromkeys(s.modality for s in series if s.modality)),
    )
