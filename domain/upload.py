"""The uploader's pure rules: what a FHIR answer means, what to do next, what to record per study.

No I/O: :mod:`agents.fhir_writer` makes one attempt (look up, build, save, post) and asks :func:`next_step`
what follows. The rules, in order of how often they matter:

- **Transient** (connection errors, timeouts, 408/425/429, 5xx, 401/403 and token-endpoint failures,
  a bundle that could not be saved, a 2xx whose body says nothing): never the study's fault. Retried
  inline a few times, then parked in the retry topic with capped exponential backoff, for as long as
  the outage lasts. Never dead-lettered.
- **Conflict** (409/412): another writer won a race. Retried almost at once, a bounded number of
  times (``uploader_conflict_attempts``), then dead-lettered with a reason that names the cause.
- **Rejected** (any other 4xx): the server will never take this bundle: dead-lettered at once.

Nothing here logs or returns a server's diagnostics as a loggable reason: servers echo identifiers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any

import msgspec
import orjson

from domain.errors import InvalidRecordError

OUTCOME_SCHEMA_VERSION = 2
OPERATION_OUTCOME_MAX_BYTES = 64 * 1024
_HAPI_CODE = re.compile(r"\bHAPI-\d{4}\b")


class Verdict(StrEnum):
    SUCCESS = "success"
    TRANSIENT = "transient"  # the server, the network or the credentials: retry for as long as it lasts
    CONFLICT = "conflict"  # 409/412: a concurrent write; read again and retry at once, a bounded number of times
    REJECT = "reject"  # any other 4xx: the server will never accept this bundle


def classify_status(status: int) -> Verdict:
    """What an HTTP status of the FHIR server means for the upload.

    401/403 are transient, not rejections: an expired or misconfigured credential is not the study's
    fault, and dead-lettering every study until someone fixes it would take them out of the pipeline.
    """
    if 200 <= status < 300:
        return Verdict.SUCCESS
    if status in (409, 412):
        return Verdict.CONFLICT
    if status in (401, 403, 407, 408, 425, 429) or status >= 500 or status < 200:
        return Verdict.TRANSIENT
    return Verdict.REJECT


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The uploader's retry limits (see the ``uploader_*`` settings)."""

    inline_attempts: int = 3
    inline_budget: float = 20.0
    conflict_attempts: int = 12
    conflict_delay_max: float = 0.25
    inline_conflict_attempts: int = 9
    backoff_initial: float = 0.5
    backoff_max: float = 60.0
    backoff_jitter: float = 0.5


class Action(StrEnum):
    DONE = "done"
    RETRY_INLINE = "retry_inline"  # wait ``delay`` and try again while holding the partition
    PARK = "park"  # to the retry topic, due in ``delay`` seconds
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True, slots=True)
class Step:
    action: Action
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class AttemptCounts:
    """How often this revision was tried: in this hold of the partition, in all, and how many lost a race."""

    inline: int  # attempts since the record was taken from the topic (1 after the first)
    total: int  # attempts of this revision in all, parked ones included
    conflicts: int  # of them, answered 409/412
    elapsed: float  # seconds since the record was taken from the topic


def backoff_delay(attempt: int, initial: float, maximum: float, jitter: float, random_unit: float) -> float:
    """Exponential backoff before retry number ``attempt`` (1-based), with +/- ``jitter`` fraction.

    ``random_unit`` is a uniform draw in [0, 1) supplied by the caller (keeps this function pure).
    """
    base = min(maximum, initial * 2 ** min(max(0, attempt - 1), 60))
    return max(0.0, base * (1.0 + jitter * (2.0 * random_unit - 1.0)))


def next_step(
    verdict: Verdict,
    counts: AttemptCounts,
    policy: RetryPolicy,
    random_unit: float,
    retry_after: float | None = None,
    healthy: bool = True,
) -> Step:
    """What follows an attempt. ``healthy`` is False while the server is known to be down: park at once."""
    if verdict is Verdict.SUCCESS:
        return Step(Action.DONE)
    if verdict is Verdict.REJECT:
        return Step(Action.DEAD_LETTER)
    if verdict is Verdict.CONFLICT:
        if counts.conflicts >= policy.conflict_attempts:
            return Step(Action.DEAD_LETTER)
        delay = policy.conflict_delay_max * random_unit
        inline = counts.inline < policy.inline_conflict_attempts
    else:
        delay = backoff_delay(
            counts.total, policy.backoff_initial, policy.backoff_max, policy.backoff_jitter, random_unit
        )
        if retry_after is not None:
            delay = max(delay, min(retry_after, policy.backoff_max))
        inline = healthy and counts.inline < policy.inline_attempts
    if inline and counts.elapsed + delay <= policy.inline_budget:
        return Step(Action.RETRY_INLINE, delay)
    return Step(Action.PARK, delay)


def retry_after_seconds(value: str | None, now_epoch: float) -> float | None:
    """The ``Retry-After`` header (seconds or an HTTP date) as seconds from now; ``None`` if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(min(int(value), 86_400))
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now_epoch)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def operation_outcome(body: bytes) -> dict[str, Any] | None:
    """The OperationOutcome in a response body, if it is one (anything else: ``None``)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if (
        isinstance(data, dict)
        and data.get("resourceType") == "OperationOutcome"
        and isinstance(data.get("issue"), list)
    ):
        return data
    return None


def _issues(outcome: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not outcome:
        return []
    return [issue for issue in outcome.get("issue") or () if isinstance(issue, dict)]


def outcome_issue_codes(outcome: dict[str, Any] | None) -> str:
    """``severity/code`` of each issue and the server's message codes (HAPI-nnnn): safe to log."""
    parts = []
    for issue in _issues(outcome):
        severity, code = str(issue.get("severity", "?"))[:16], str(issue.get("code", "?"))[:32]
        text = f"{severity}/{code}"
        hapi = _HAPI_CODE.findall(str(issue.get("diagnostics") or ""))
        parts.append(f"{text} {' '.join(dict.fromkeys(hapi))}".strip())
    return ", ".join(parts)


def outcome_diagnostics(outcome: dict[str, Any] | None, limit: int = 1000) -> str:
    """The issues' diagnostics joined: for the dead letter and the web view's patient data, never for logs."""
    texts = []
    for issue in _issues(outcome):
        details = issue.get("details")
        text = issue.get("diagnostics") or (details.get("text") if isinstance(details, dict) else "") or ""
        texts.append(str(text))
    return "; ".join(texts)[:limit]


def conflict_cause(status: int) -> str:
    if status == 409:
        return "a concurrent write of the same resource (version conflict)"
    return "a precondition failed (the ImagingStudy changed meanwhile, or a conditional URL matched several resources)"


def study_location(transaction_response: Any) -> str:
    """``ImagingStudy/<id>/_history/<v>`` from a transaction-response (the ImagingStudy entry is the last)."""
    if not isinstance(transaction_response, dict):
        return ""
    for entry in reversed(transaction_response.get("entry") or ()):
        if not isinstance(entry, dict):
            continue
        response = entry.get("response")
        location = str(response.get("location") or "") if isinstance(response, dict) else ""
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
    FAILED = "failed"  # rejected by the server, or out of conflict retries: the revision is in the DLQ


class UploadOutcome(msgspec.Struct, frozen=True, gc=False):
    """What the uploader last did for a study; written only by the uploader agent, read by the web view."""

    study_uid: str
    revision: int  # the revision of the last attempt
    status: UploadStatus
    published_revision: int = 0  # highest revision known to be on the FHIR server
    resource_url: str = ""  # absolute URL of the ImagingStudy
    reason: str = ""  # failure or retry reason: status codes and issue codes only, safe to show and log
    detail: str = ""  # the server's diagnostics (may quote patient data: web view with patient data only)
    http_status: int = 0
    attempts: int = 0  # attempts of ``revision`` so far
    updated_at: str = ""  # ISO 8601 UTC
    published_at: str = ""
    next_attempt_at: str = ""
    retrying_since: str = ""  # ISO 8601 UTC: first failed attempt of the revision now parked
    generation: int = 1  # the state generation of ``revision``
    published_generation: int = 1  # ... and of ``published_revision``

    @property
    def published_version(self) -> tuple[int, int]:
        return (self.published_generation, self.published_revision)


def is_superseded(known: UploadOutcome | None, version: tuple[int, int]) -> bool:
    """Whether (generation, revision) ``version`` is already on the server, or older than what is."""
    return known is not None and known.published_revision > 0 and known.published_version >= version


def published(
    known: UploadOutcome | None, study_uid: str, version: tuple[int, int], resource_url: str, at: str
) -> UploadOutcome:
    """The state after ``version`` (or a higher one found on the server) is known to be published."""
    best = max(version, known.published_version if known and known.published_revision else (0, 0))
    return UploadOutcome(
        study_uid=study_uid,
        revision=best[1],
        generation=best[0],
        status=UploadStatus.PUBLISHED,
        published_revision=best[1],
        published_generation=best[0],
        resource_url=resource_url or (known.resource_url if known else ""),
        attempts=0,
        updated_at=at,
        published_at=at,
    )


def not_published(
    known: UploadOutcome | None,
    study_uid: str,
    version: tuple[int, int],
    status: UploadStatus,
    reason: str,
    http_status: int,
    attempts: int,
    at: str,
    next_attempt_at: str = "",
    detail: str = "",
) -> UploadOutcome:
    """The state after an attempt that did not publish; what is already published stays recorded."""
    same_revision = known is not None and (known.generation, known.revision) == version
    since = known.retrying_since if same_revision and known and known.retrying_since else at
    return UploadOutcome(
        study_uid=study_uid,
        revision=version[1],
        generation=version[0],
        status=status,
        published_revision=known.published_revision if known else 0,
        published_generation=known.published_generation if known else 1,
        resource_url=known.resource_url if known else "",
        reason=reason,
        detail=detail,
        http_status=http_status,
        attempts=attempts,
        updated_at=at,
        published_at=known.published_at if known else "",
        next_attempt_at=next_attempt_at,
        retrying_since=since if status is UploadStatus.RETRYING else "",
    )


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(UploadOutcome)


def encode_outcome(outcome: UploadOutcome) -> bytes:
    return _encoder.encode(outcome)


def decode_outcome(raw: bytes) -> UploadOutcome:
    try:
        return _decoder.decode(raw)
    except msgspec.MsgspecError as exc:
        raise InvalidRecordError(f"corrupt upload outcome: {exc}", reason="corrupt_state") from None
