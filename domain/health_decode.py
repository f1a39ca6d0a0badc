"""The trust boundary of ``studystream status``: bytes from receivers, workers and the group coordinator.

Every decoder here takes what another process sent (an HTTP body, a consumer group member's
metadata and assignment) and returns a value of :mod:`domain.health`; none raises on malformed input.
A body that is not what it should be yields an *unreadable* component, never an exception, and no
text from it reaches the screen unfiltered (control characters dropped, lengths bounded, study UIDs
only when they are UIDs: never a patient's name, even if a worker sent one).

The group member bytes are Kafka's consumer protocol (``ConsumerProtocolMemberMetadata`` /
``ConsumerProtocolMemberAssignment``: version, topics and partitions, user data). Faust's assignor
puts its ``ClientMetadata`` (JSON, zlib-compressed in the assignment) in the user data; its ``url``
is the worker's web URL.
"""

from __future__ import annotations

import math
import re
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from domain.health import STUDY_STATUSES, ReceiverHealth, StudyCounts, WorkerMember
from domain.uids import is_valid_uid

TEXT_LIMIT = 200  # characters of any foreign text kept for the screen
MAX_COUNT = 2**53  # beyond what any depth or count can be; also what JSON numbers survive exactly
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_URL = re.compile(r"\Ahttps?://[A-Za-z0-9._\-\[\]:]+(/[A-Za-z0-9._~\-/]*)?\Z")


def clean_text(value: object, limit: int = TEXT_LIMIT) -> str:
    """Printable text of at most ``limit`` characters ("" for a non-string)."""
    if not isinstance(value, str):
        return ""
    return _UNPRINTABLE.sub("", value)[:limit]


def _count(value: object) -> int | None:
    """A non-negative integer count, or ``None`` (booleans, floats, huge or negative numbers)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        return None
    return value


def _seconds(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    seconds = float(value)
    return seconds if math.isfinite(seconds) and 0 <= seconds <= 1e12 else None


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(body)
    except (orjson.JSONDecodeError, TypeError):
        return None
    return value if isinstance(value, dict) else None


# --- receivers -------------------------------------------------------------------------------------


def decode_receiver_health(url: str, http_status: int, body: bytes) -> ReceiverHealth:
    """A receiver's ``/health`` answer (scp/metrics.py: ``ok``, ``outbox_depth``, ``quarantine_depth``, ...)."""
    if http_status not in (200, 503):  # 503: not serving, with its report
        return ReceiverHealth(url, True, http_status, readable=False, error=f"HTTP {http_status}")
    report = _json_object(body)
    unreadable = ReceiverHealth(url, True, http_status, readable=False, error="unreadable health")
    if report is None:
        return unreadable
    serving, connected = report.get("ok"), report.get("broker_connected", True)
    outbox, quarantine = _count(report.get("outbox_depth")), _count(report.get("quarantine_depth"))
    associations = report.get("associations", 0)
    if not isinstance(serving, bool) or not isinstance(connected, bool) or outbox is None or quarantine is None:
        return unreadable
    return ReceiverHealth(
        url,
        True,
        http_status,
        readable=True,
        serving=serving,
        broker_connected=connected,
        outbox_depth=outbox,
        quarantine_depth=quarantine,
        associations=_count(associations),
    )


# --- workers' web API ------------------------------------------------------------------------------


def decode_worker_health(http_status: int, body: bytes) -> str:
    """A worker's open ``/health`` (``{"status": "ok"}``, or 503 with ``rebalancing``/``recovering``)."""
    report = _json_object(body)
    status = report.get("status") if report is not None else None
    if not isinstance(status, str) or not status:
        return "unreadable health"
    status = clean_text(status, 40)
    if http_status == 200 and status == "ok":
        return "ok"
    return status if status != "ok" else f"HTTP {http_status}"


@dataclass(frozen=True, slots=True)
class WorkerStudies:
    """One worker's ``/api/studies`` answer, decoded."""

    counts: dict[str, int]
    complete: bool
    parked: int
    oldest_parked_seconds: float
    failed_uids: tuple[str, ...]


def decode_studies_answer(body: bytes) -> WorkerStudies | None:
    """``/api/studies`` (web/views.py): counts, upload outage, study rows; ``None`` when unreadable.

    Of the rows only the UIDs of failed and conflicting studies are kept: rows carry demographics
    when the workers run with ``web_show_patient_data``, and nothing of those may be printed.
    """
    answer = _json_object(body)
    if answer is None:
        return None
    counts, outage, rows, complete = (answer.get(k) for k in ("counts", "upload_outage", "studies", "complete"))
    if not isinstance(counts, dict) or not isinstance(outage, dict) or not isinstance(rows, list):
        return None
    parsed = {status: _count(counts.get(status, 0)) for status in STUDY_STATUSES}
    parked, oldest = _count(outage.get("parked")), _seconds(outage.get("oldest_parked_seconds"))
    if any(v is None for v in parsed.values()) or parked is None or oldest is None or not isinstance(complete, bool):
        return None
    failed = sorted(
        {
            row["study_uid"]
            for row in rows
            if isinstance(row, dict)
            and row.get("status") in ("failed", "conflict")
            and is_valid_uid(row.get("study_uid"))
        }
    )
    return WorkerStudies({k: v for k, v in parsed.items() if v is not None}, complete, parked, oldest, tuple(failed))


def merge_studies(answers: Sequence[WorkerStudies | str], uid_limit: int) -> StudyCounts:
    """Every asked worker's answer (or why it gave none) → one :class:`StudyCounts`.

    Each worker lists every worker's studies, so the counts are taken from one complete answer; parked
    uploads are each worker's own, so they are summed (the oldest is the oldest of all).
    """
    good = [a for a in answers if isinstance(a, WorkerStudies)]
    errors = [a for a in answers if isinstance(a, str)]
    if not good:
        reason = errors[0] if errors else "no worker web URL known"
        return StudyCounts(workers_asked=len(answers), error=clean_text(reason))
    best = next((a for a in good if a.complete), good[0])
    return StudyCounts(
        counts=dict(best.counts),
        parked=sum(a.parked for a in good),
        oldest_parked_seconds=max(a.oldest_parked_seconds for a in good),
        failed_uids=tuple(sorted({uid for a in good for uid in a.failed_uids})[:uid_limit]),
        complete=best.complete and not errors,
        workers_asked=len(answers),
        workers_answered=len(good),
    )


# --- consumer group members ------------------------------------------------------------------------


class _Reader:
    """Kafka protocol primitives over bytes; any overrun or bad value raises ``ValueError``."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError("truncated")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def int16(self) -> int:
        return struct.unpack(">h", self.take(2))[0]

    def int32(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def string(self) -> str:
        return self.take(self.int16()).decode("utf-8")  # a null string (-1) is refused by take

    def blob(self) -> bytes:
        n = self.int32()
        return b"" if n == -1 else self.take(n)

    def count(self, item_size: int) -> int:
        n = self.int32()
        if n == -1:
            return 0
        if n < 0 or n * item_size > len(self.data) - self.pos:
            raise ValueError("bad array length")
        return n


def _assignment(data: bytes) -> tuple[dict[str, tuple[int, ...]], bytes]:
    reader = _Reader(data)
    reader.int16()  # version
    partitions: dict[str, tuple[int, ...]] = {}
    for _ in range(reader.count(6)):
        topic = reader.string()
        numbers = [reader.int32() for _ in range(reader.count(4))]
        if not topic or any(n < 0 for n in numbers):
            raise ValueError("bad topic partition")
        key = clean_text(topic, 249)
        partitions[key] = tuple(sorted(set(partitions.get(key, ()) + tuple(numbers))))
    return partitions, reader.blob()


def _subscription_user_data(data: bytes) -> bytes:
    reader = _Reader(data)
    reader.int16()
    for _ in range(reader.count(2)):
        reader.string()
    return reader.blob()


def _url_in(user_data: bytes, compressed: bool, max_bytes: int) -> str:
    """Faust's ``ClientMetadata.url`` in a member's user data, if it is an http(s) URL."""
    try:
        if compressed:
            inflater = zlib.decompressobj()
            user_data = inflater.decompress(user_data, max_bytes)
            if inflater.unconsumed_tail:
                return ""
    except zlib.error:
        return ""
    document = _json_object(user_data)
    url = document.get("url") if document is not None else None
    if not isinstance(url, str) or len(url) > TEXT_LIMIT or not _URL.match(url):
        return ""
    return url.rstrip("/")


def decode_member(
    member_id: object, client_id: object, host: object, metadata: object, assignment: object, max_bytes: int
) -> WorkerMember:
    """One member of DescribeGroups: its Kafka assignment (``None`` when unreadable) and its web URL."""
    member = WorkerMember(clean_text(member_id), clean_text(client_id), clean_text(host).lstrip("/"))
    partitions: dict[str, tuple[int, ...]] | None = {}
    url = ""
    if isinstance(assignment, bytes) and assignment:
        try:
            partitions, user_data = _assignment(assignment)
            url = _url_in(user_data, True, max_bytes)
        except (ValueError, UnicodeDecodeError, struct.error):
            partitions = None
    elif not isinstance(assignment, bytes | type(None)):
        partitions = None
    if not url and isinstance(metadata, bytes) and metadata:
        try:
            url = _url_in(_subscription_user_data(metadata), False, max_bytes)
        except (ValueError, UnicodeDecodeError, struct.error):
            url = ""
    return WorkerMember(member.member_id, member.client_id, member.host, url, partitions)


def member_urls(members: Iterable[WorkerMember]) -> list[str]:
    return sorted({m.url for m in members if m.url})
