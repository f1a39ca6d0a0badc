"""Dead letters on ``imaging.dlq``: the headers that say why, written and read from these names only.

A dead letter is the original record (key and value, byte for byte) with headers:

===================================  ==============================================================
``studystream-stage``                who gave up: ``aggregator``, ``uploader``, ``retry``, ...
``studystream-reason``               metric-friendly reason name (``invalid_field``, ``fhir_rejected``)
``studystream-message``              what is wrong, without patient data (safe to show and log)
``studystream-source``               ``topic[partition]@offset`` of the original record
``studystream-source-topic``         the original topic (what ``studystream redrive`` sends it back to)
``studystream-dead-lettered-at``     ISO 8601 UTC
``studystream-http-status``          the FHIR server's status, when it refused
``studystream-detail``               the server's diagnostics: may quote patient data
``studystream-operation-outcome``    the server's OperationOutcome (JSON, truncated): may quote patient data
``studystream-original-headers``     the original record's own headers (JSON), so a redrive restores them
===================================  ==============================================================

Pure: no Kafka here (the writer is :class:`agents.policy.DeadLetterWriter`, the readers the web view's
DLQ page and ``studystream redrive``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import orjson

PREFIX = "studystream-"
STAGE = PREFIX + "stage"
REASON = PREFIX + "reason"
MESSAGE = PREFIX + "message"
SOURCE = PREFIX + "source"
SOURCE_TOPIC = PREFIX + "source-topic"
DEAD_LETTERED_AT = PREFIX + "dead-lettered-at"
HTTP_STATUS = PREFIX + "http-status"
DETAIL = PREFIX + "detail"
OPERATION_OUTCOME = PREFIX + "operation-outcome"
ORIGINAL_HEADERS = PREFIX + "original-headers"
REDRIVEN_FROM = PREFIX + "redriven-from"  # on a record ``studystream redrive`` sent back: ``dlq[p]@o``

# What a dead letter may show without patient data; detail and outcome only with web_show_patient_data.
SAFE_HEADERS = (STAGE, REASON, MESSAGE, SOURCE, SOURCE_TOPIC, DEAD_LETTERED_AT, HTTP_STATUS)
TEXT_MAX_BYTES = 1000
OUTCOME_MAX_BYTES = 64 * 1024
_SOURCE = re.compile(r"\A(?P<topic>[A-Za-z0-9._-]{1,249})\[(?P<partition>\d{1,9})\]@(?P<offset>\d{1,19})\Z")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Why a record is dead-lettered, as the error policy decided it."""

    stage: str
    reason: str  # metric-friendly name
    message: str  # no patient data
    detail: str = ""  # may hold patient data
    http_status: int = 0
    operation_outcome: bytes = b""  # JSON, may hold patient data


@dataclass(frozen=True, slots=True)
class Source:
    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


def parse_source(text: str) -> Source | None:
    match = _SOURCE.match(text)
    if match is None:
        return None
    return Source(match["topic"], int(match["partition"]), int(match["offset"]))


def _clip(text: str, limit: int = TEXT_MAX_BYTES) -> bytes:
    return text.encode("utf-8", "replace")[:limit]


def build_headers(
    letter: DeadLetter, source: Source, at: str, original_headers: Iterable[tuple[str, bytes]] = ()
) -> list[tuple[str, bytes]]:
    headers = [
        (STAGE, _clip(letter.stage, 64)),
        (REASON, _clip(letter.reason, 64)),
        (MESSAGE, _clip(letter.message)),
        (SOURCE, str(source).encode()),
        (SOURCE_TOPIC, source.topic.encode()),
        (DEAD_LETTERED_AT, at.encode()),
    ]
    if letter.http_status:
        headers.append((HTTP_STATUS, str(letter.http_status).encode()))
    if letter.detail:
        headers.append((DETAIL, _clip(letter.detail)))
    if letter.operation_outcome:
        headers.append((OPERATION_OUTCOME, letter.operation_outcome[:OUTCOME_MAX_BYTES]))
    kept = [(k, v) for k, v in original_headers if not k.startswith(PREFIX) or k == REDRIVEN_FROM]
    if kept:
        headers.append((ORIGINAL_HEADERS, orjson.dumps([[k, v.decode("latin-1")] for k, v in kept])))
    return headers


def header_map(headers: Iterable[tuple[str, bytes | None]] | Mapping[str, bytes | None]) -> dict[str, bytes]:
    """Kafka headers (a list of pairs, or a mapping) as a dict; later duplicates win."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {str(k): (v if isinstance(v, bytes) else b"" if v is None else str(v).encode()) for k, v in items}


def original_headers(headers: Mapping[str, bytes]) -> list[tuple[str, bytes]]:
    """The headers the record had before it was dead-lettered (for a redrive); ``[]`` when unreadable."""
    raw = headers.get(ORIGINAL_HEADERS)
    if not raw:
        return []
    try:
        pairs = orjson.loads(raw)
        return [(str(k), str(v).encode("latin-1")) for k, v in pairs]
    except (orjson.JSONDecodeError, TypeError, ValueError, UnicodeEncodeError):
        return []


def text(headers: Mapping[str, bytes], name: str) -> str:
    value = headers.get(name)
    return value.decode("utf-8", "replace") if value is not None else ""
