"""The uploader's pure rules: how to treat a FHIR response, how long to back off, what to record per study.

No I/O: :mod:`agents.uploader` does the HTTP calls and the Kafka sends, and asks these functions what
each answer means.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any

import orjson

from domain.errors import InvalidEventError

OUTCOME_SCHEMA_VERSION = 1
OPERATION_OUTCOME_MAX_BYTES = 64 * 1024


class Verdict(StrEnum):
    SUCCESS = "success"
    RETRY = "retry"  # transient: connection error, timeout, 408, 429, 5xx, 401/403 (credentials, not data)
    CONFLICT = "conflict"  # 409/412: a concurrent write; read again and retry at once
    REJECT = "reject"  # any other 4xx: the server will never accept this bundle


def classify_status(status: int) -> Verdict:
    """What an HTTP status of the FHIR server means for the upload.

    401/403 are retried, not dead-lettered: an expired or misconfigured credential is not the study's
    fault, and dead-lettering every study until someone fixes it would lose them from the pipeline.
    """
    if 200 <= status < 300:
        return Verdict.SUCCESS
    if status in (409, 412):
        return Verdict.CONFLICT
    if status in (401, 403, 408, 425, 429) or status >= 500:
        return Verdict.RETRY
    return Verdict.REJECT


def backoff_delay(attempt: int, initial: float, maximum: float, jitter: float, random_unit: float) -> float:
    """Exponential backoff before retry number ``attempt`` (1-based), with +/- ``jitter`` fraction.

    ``random_unit`` is a uniform draw in [0, 1) supplied by the caller (keeps this function pure).
    """
    base = min(maximum, initial * 2 ** max(0, attempt - 1))
    return max(0.0, base * (1.0 + jitter * (2.0 * random_unit - 1.0)))


def retry_after_seconds(value: str | None, now_epoch: float) -> float | None:
    """The ``Retry-After`` header (seconds or an HTTP date) as seconds from now; ``None`` if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now_epoch)
    except (TypeError, ValueError):
        return None


def operation_outcome(body: bytes) -> dict[str, Any] | None:
    """The OperationOutcome in a response body (directly or inside a transaction-response), if any."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(data, dict) and data.get("resourceType") == "OperationOutcome":
        return data
    return None


def outcome_issue_codes(outcome: dict[str, Any] | None) -> str:
    """``severity/code`` of each issue: safe to log (diagnostics may quote patient data)."""
    if not outcome:
        return ""
    return ", ".join(f"{i.get('severity', '?')}/{i.get('code', '?')}" for i in outcome.get("issue") or ())


def outcome_diagnostics(outcome: dict[str, Any] | None, limit: int = 1000) -> str:
    """The issues' diagnostics joined: for the study's recorded state and the DLQ, never for logs."""
    if not outcome:
        return ""
    text = "; ".join(str(i.get("diagnostics") or i.get("details", {}).get("text") or "") for i in outcome["issue"])
    return text[:limit]


def study_location(transaction_response: dict[str, Any]) -> str:
    """``ImagingStudy/<id>/_history/<v>`` from a transaction-response (the ImagingStudy entry is the last)."""
    for entry in reversed(transaction_response.get("entry") or ()):
        location = (entry.get("response") or {}).get("location") or ""
        if location.startswith("ImagingStudy/") or "/ImagingStudy/" in location:
            return location
    return ""


def without_history(location: str) -> str:
    """``ImagingStudy/12/_history/3`` → ``ImagingStudy/12``."""
    return location.split("/_history/", 1)[0]


# --- The study's upload state (the outcomes table's value) ---------------------------------------


class UploadStatus(StrEnum):
    PUBLISHED = "published"
    RETRYING = "retrying"  # parked in the retry topic: another attempt is due at ``next_attempt_at``
    FAILED = "failed"  # rejected by the server, or retries exhausted: the revision is in the DLQ


@dataclass(frozen=True, slots=True)
class UploadOutcome:
    """What the uploader last did for a study; written only by the uploader agent, read by the web view."""

    study_uid: str
    revision: int  # the revision of the last attempt
    status: UploadStatus
    published_revision: int = 0  # highest revision known to be on the FHIR server
    resource_url: str = ""  # absolute URL of the ImagingStudy
    reason: str = ""  # failure or retry reason (may quote server diagnostics: web view only, never logs)
    http_status: int = 0
    attempts: int = 0  # attempts of ``revision`` so far
    updated_at: str = ""  # ISO 8601 UTC
    published_at: str = ""
    next_attempt_at: str = ""


def is_superseded(known: UploadOutcome | None, revision: int) -> bool:
    """Whether ``revision`` is already on the server, or older than what is: nothing to upload."""
    return known is not None and known.published_revision >= revision


def published(known: UploadOutcome | None, study_uid: str, revision: int, resource_url: str, at: str) -> UploadOutcome:
    """The state after ``revision`` (or a higher one found on the server) is known to be published."""
    best = max(revision, known.published_revision if known else 0)
    return UploadOutcome(
        study_uid=study_uid,
        revision=best,
        status=UploadStatus.PUBLISHED,
        published_revision=best,
        resource_url=resource_url or (known.resource_url if known else ""),
        attempts=0,
        updated_at=at,
        published_at=at,
    )


def not_published(
    known: UploadOutcome | None,
    study_uid: str,
    revision: int,
    status: UploadStatus,
    reason: str,
    http_status: int,
    attempts: int,
    at: str,
    next_attempt_at: str = "",
) -> UploadOutcome:
    """The state after an attempt that did not publish; what is already published stays recorded."""
    return UploadOutcome(
        study_uid=study_uid,
        revision=revision,
        status=status,
        published_revision=known.published_revision if known else 0,
        resource_url=known.resource_url if known else "",
        reason=reason,
        http_status=http_status,
        attempts=attempts,
        updated_at=at,
        published_at=known.published_at if known else "",
        next_attempt_at=next_attempt_at,
    )


def encode_outcome(outcome: UploadOutcome) -> bytes:
    return orjson.dumps({"v": OUTCOME_SCHEMA_VERSION, **dataclasses.asdict(outcome)})


def decode_outcome(raw: bytes) -> UploadOutcome:
    try:
        data = orjson.loads(raw)
        data.pop("v", None)
        data["status"] = UploadStatus(data["status"])
        return UploadOutcome(**data)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise InvalidEventError(f"corrupt upload outcome: {exc}") from None
