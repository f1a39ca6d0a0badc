"""The worker metrics added for the dashboard: consumer lag and time from last instance to FHIR."""

from __future__ import annotations

from dataclasses import dataclass

from faust.types import TP
from prometheus_client.parser import text_string_to_metric_families

from domain.study_state import PatientInfo, StudyHeader, StudyInfo
from domain.upload import UploadOutcome, UploadStatus
from web.metrics import WebMetrics, consumer_lag, fhir_delay


@dataclass
class FakeConsumer:
    ends: dict[TP, int]
    _committed_offset: dict[TP, int]

    def assignment(self) -> set[TP]:
        return set(self.ends)

    def highwater(self, tp: TP) -> int:
        return self.ends[tp]


def test_consumer_lag_counts_owned_partitions_with_a_committed_offset() -> None:
    raw, ready, changelog = TP("imaging.raw", 3), TP("imaging.study.ready", 0), TP("studystream-headers-changelog", 3)
    consumer = FakeConsumer({raw: 120, ready: 7, changelog: 50}, {raw: 100, ready: 9})
    # ready: a committed offset past the last known end (a stale highwater) is no negative lag
    assert consumer_lag(consumer) == {("imaging.raw", 3): 20, ("imaging.study.ready", 0): 0}


def _header(revision: int, last_event_time: float) -> StudyHeader:
    return StudyHeader(
        study=StudyInfo(uid="1.2.3"), patient=PatientInfo(), revision=revision, last_event_time=last_event_time
    )


def _outcome(published_revision: int, published_at: str) -> UploadOutcome:
    return UploadOutcome(
        study_uid="1.2.3", status=UploadStatus.PUBLISHED, revision=published_revision,
        published_revision=published_revision,
        published_at=published_at,
    )  # fmt: skip


def test_fhir_delay_is_from_the_last_instance_to_the_current_revision_on_the_server() -> None:
    last = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    assert fhir_delay(_header(2, last), _outcome(2, "2026-01-01T00:00:42Z")) == 42.0
    assert fhir_delay(_header(3, last), _outcome(2, "2026-01-01T00:00:42Z")) is None  # revision 3 not there yet
    assert fhir_delay(_header(2, last), None) is None
    assert fhir_delay(_header(2, last), _outcome(2, "")) is None


def test_the_families_are_served_with_their_samples() -> None:
    metrics = WebMetrics(
        dict, dict, consumer_lag=lambda: {("imaging.raw", 1): 5}, fhir_delays=lambda: [0.5, 40.0, 4000.0]
    )
    families = {f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())}
    (lag,) = families["studystream_consumer_lag"].samples
    assert lag.labels == {"topic": "imaging.raw", "partition": "1"} and lag.value == 5
    samples = {(s.name, s.labels.get("le")): s.value for s in families["studystream_study_fhir_delay_seconds"].samples}
    assert samples[("studystream_study_fhir_delay_seconds_bucket", "1.0")] == 1
    assert samples[("studystream_study_fhir_delay_seconds_bucket", "60.0")] == 2
    assert samples[("studystream_study_fhir_delay_seconds_bucket", "+Inf")] == 3
    assert samples[("studystream_study_fhir_delay_seconds_count", None)] == 3
    assert samples[("studystream_study_fhir_delay_seconds_sum", None)] == 4040.5
