"""Study state → the web view's rows (pure: no Faust, no I/O).

One row per study joins the aggregator's :class:`~domain.study.StudyHeader` with the uploader's last
:class:`~domain.upload.UploadOutcome`. The JSON API returns these rows; the HTML pages render them.
Patient data (name, identifiers, birth date, sex) is left out unless ``show_patient_data``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from domain.completeness import Completeness, CompletenessPolicy
from domain.rejection import REJECTION_CODES
from domain.study import in_conflict
from domain.study_state import InstanceInfo, SeriesInfo, StudyHeader, StudyStatus
from domain.uids import is_valid_uid
from domain.upload import UploadOutcome, UploadStatus


class DisplayStatus(StrEnum):
    RECEIVING = "receiving"  # the open revision waits for its quiet period
    READY = "ready"  # emitted on imaging.study.ready, not (yet) on the FHIR server
    PUBLISHED = "published"  # this revision is on the FHIR server
    FAILED = "failed"  # the aggregator or the uploader gave up on this revision
    CONFLICT = "conflict"  # instances of more than one patient: held until consistent or resolved


STATUSES = tuple(s.value for s in DisplayStatus)


@dataclass(frozen=True, slots=True)
class ViewOptions:
    show_patient_data: bool
    quiet_period: float
    completeness: CompletenessPolicy | None = None  # the rules by source; None: ``quiet_period`` for every study

    def completeness_of(self, header: StudyHeader) -> Completeness:
        if self.completeness is None:
            return Completeness(self.quiet_period)
        return self.completeness.decide(header.sources, header.sources_overflow)


def display_status(header: StudyHeader, outcome: UploadOutcome | None) -> DisplayStatus:
    """One status per study from the aggregator's and the uploader's view of the current revision."""
    if header.status is StudyStatus.RECEIVING:
        return DisplayStatus.CONFLICT if in_conflict(header) else DisplayStatus.RECEIVING
    if header.status is StudyStatus.FAILED:
        return DisplayStatus.FAILED
    if header.status is StudyStatus.CONFLICT:
        return DisplayStatus.CONFLICT
    if outcome is not None and outcome.published_revision >= header.revision and outcome.published_revision:
        return DisplayStatus.PUBLISHED
    if outcome is not None and outcome.revision >= header.revision and outcome.status is UploadStatus.FAILED:
        return DisplayStatus.FAILED
    return DisplayStatus.READY


def _epoch(iso: str) -> float | None:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def quiet_remaining(header: StudyHeader, now: float, quiet_period: float) -> float | None:
    """Seconds until the open revision's quiet period ends (0: due, awaiting the check); ``None`` if not open."""
    if header.status is not StudyStatus.RECEIVING:
        return None
    return round(max(0.0, quiet_period - (now - header.last_wall_time)), 1)


def completeness_fields(header: StudyHeader, completeness: Completeness) -> dict[str, Any]:
    """Who sent the study and what its completeness rules make of them (see domain.completeness)."""
    return {
        "quiet_period_seconds": completeness.quiet_period,
        "trusted_signals": sorted(s.value for s in completeness.trusted_signals),
        "sources": [{"calling_ae": s.calling_ae, "modality": s.modality} for s in header.sources],
        "sources_truncated": header.sources_overflow,
    }


def patient_fields(header: StudyHeader, show: bool) -> dict[str, str] | None:
    if not show:
        return None
    p = header.patient
    return {"name": p.name, "id": p.id, "issuer": p.issuer, "birth_date": p.birth_date, "sex": p.sex}


def patients_fields(header: StudyHeader, show: bool) -> list[dict[str, Any]]:
    """Every patient identity among the study's instances, by its key (a hash); the demographics only with
    patient data. More than one: a conflict, which `studystream resolve <study> --patient <key>` decides."""
    rows = []
    for seen in header.patients:
        row: dict[str, Any] = {"key": seen.key, "instances": seen.instances, "current": seen.key == header.patient_key}
        if show:
            p = seen.patient
            row.update(name=p.name, id=p.id, issuer=p.issuer, birth_date=p.birth_date, sex=p.sex)
        rows.append(row)
    return rows


def outcome_fields(outcome: UploadOutcome | None, show_patient_data: bool = False) -> dict[str, Any] | None:
    """The last FHIR outcome; the server's diagnostics (which may quote the patient) only with patient data."""
    if outcome is None:
        return None
    return {
        "detail": outcome.detail if show_patient_data else None,
        "retrying_since": outcome.retrying_since,
        "status": outcome.status.value,
        "revision": outcome.revision,
        "published_revision": outcome.published_revision,
        "url": outcome.resource_url,
        "reason": outcome.reason,
        "http_status": outcome.http_status,
        "attempts": outcome.attempts,
        "updated_at": outcome.updated_at,
        "published_at": outcome.published_at,
        "next_attempt_at": outcome.next_attempt_at,
    }


def study_row(
    header: StudyHeader,
    outcome: UploadOutcome | None,
    modalities: Iterable[str],
    now: float,
    options: ViewOptions,
) -> dict[str, Any]:
    """The JSON-ready row of one study."""
    first = _epoch(header.first_received)
    study = header.study
    completeness = options.completeness_of(header)
    return {
        "study_uid": study.uid,
        "status": display_status(header, outcome).value,
        "aggregator_status": header.status.value,
        "revision": header.revision,
        "published_revision": header.published_revision,
        "registered_at": header.registered_at,  # early registration on FHIR (fhir_early_registration)
        "series_count": header.series_count,
        "instance_count": header.instance_count,
        "modalities": sorted({m for m in modalities if m}),
        "accession_number": study.accession_number,
        "study_date": study.date,
        "description": study.description,
        "first_received": header.first_received,
        "last_received": header.last_received,
        "age_seconds": round(now - first, 1) if first is not None else None,
        "quiet_remaining_seconds": quiet_remaining(header, now, completeness.quiet_period),
        "completed_by": header.completed_by.value or None,
        "completeness": completeness_fields(header, completeness),
        "mpps": mpps_fields(header),
        "rejections": rejection_fields(header),
        "failure": header.failure,
        "partition": header.partition,
        "patient": patient_fields(header, options.show_patient_data),
        "patients": patients_fields(header, options.show_patient_data),
        "resolved_patient": header.resolved_key or None,
        "fhir": outcome_fields(outcome, options.show_patient_data),
    }


def mpps_fields(header: StudyHeader) -> dict[str, Any] | None:
    """The study's latest Modality Performed Procedure Step that ended (``None``: none was read)."""
    if not header.mpps_uid:
        return None
    discontinued = header.mpps_status == "DISCONTINUED"
    return {
        "uid": header.mpps_uid,
        "status": header.mpps_status,
        "waiting_for_instances": len(header.mpps_waiting),
        "reason": {"code": header.mpps_reason_code, "meaning": header.mpps_reason_meaning} if discontinued else None,
    }


def rejection_fields(header: StudyHeader) -> dict[str, Any] | None:
    """The IOCM rejection notes read for the study (``None``: none)."""
    if not header.rejection_codes:
        return None
    return {"codes": [{"code": code, "meaning": REJECTION_CODES.get(code, "")} for code in header.rejection_codes]}


def series_row(series: SeriesInfo, instance_count: int) -> dict[str, Any]:
    return {
        "series_uid": series.uid,
        "number": series.number,
        "modality": series.modality,
        "description": series.description,
        "body_part": series.body_part,
        "manufacturer": series.manufacturer,
        "model": series.model,
        "instance_count": instance_count,
    }


def instance_row(instance: InstanceInfo) -> dict[str, Any]:
    return {
        "sop_instance_uid": instance.uid,
        "series_uid": instance.series_uid,
        "sop_class_uid": instance.sop_class_uid,
        "number": instance.number,
        "sha256": instance.sha256,
        "rejection_code": instance.rejection_code or None,  # an IOCM rejection note, never listed on FHIR
        "rejects": len(instance.rejects),
    }


def study_detail(
    header: StudyHeader,
    outcome: UploadOutcome | None,
    series: Sequence[SeriesInfo],
    instances: Sequence[InstanceInfo],
    now: float,
    options: ViewOptions,
    instance_limit: int,
) -> dict[str, Any]:
    """One study with its series and (at most ``instance_limit``) instances, ordered by number."""
    per_series: dict[str, int] = {}
    for instance in instances:
        per_series[instance.series_uid] = per_series.get(instance.series_uid, 0) + 1
    row = study_row(header, outcome, (s.modality for s in series), now, options)
    study = header.study
    row["study"] = {
        "date": study.date,
        "time": study.time,
        "description": study.description,
        "accession_issuer": study.accession_issuer,
        "institution": study.institution,
        "study_id": study.study_id,
        "procedure_codes": [{"code": c.code, "scheme": c.scheme, "meaning": c.meaning} for c in study.procedure_codes],
    }
    ordered_series = sorted(series, key=lambda s: (s.number is None, s.number or 0, s.uid))
    row["series"] = [series_row(s, per_series.get(s.uid, 0)) for s in ordered_series]
    ordered = sorted(instances, key=lambda i: (i.series_uid, i.number is None, i.number or 0, i.uid))
    row["instances"] = [instance_row(i) for i in ordered[:instance_limit]]
    row["instances_truncated"] = len(ordered) > instance_limit
    return row


def filter_and_sort(rows: Iterable[dict[str, Any]], status: str | None, limit: int) -> list[dict[str, Any]]:
    """Rows of ``status`` (all if ``None``), most recently received first, at most ``limit``."""
    chosen = [r for r in rows if status is None or r["status"] == status]
    chosen.sort(key=lambda r: (r["last_received"], r["study_uid"]), reverse=True)
    return chosen[:limit]


def status_counts(rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    counts = dict.fromkeys(STATUSES, 0)
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return counts


def merge_listings(listings: Iterable[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Rows from several workers, one per study: during a rebalance two workers may both list one.

    The row with the higher revision (then the later receipt) wins.
    """
    best: dict[str, dict[str, Any]] = {}
    for rows in listings:
        for row in rows:
            known = best.get(row["study_uid"])
            if known is None or (row["revision"], row["last_received"]) > (known["revision"], known["last_received"]):
                best[row["study_uid"]] = row
    return list(best.values())


def parse_status(value: str | None) -> str | None:
    """The ``status`` query parameter: one of :data:`STATUSES`, or ``None`` for all (unknown values too)."""
    return value if value in STATUSES else None


def is_study_uid(value: str) -> bool:
    """Whether a path segment can be a Study Instance UID: else no table lookup."""
    return is_valid_uid(value)
