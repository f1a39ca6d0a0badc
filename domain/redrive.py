"""The pure half of ``studystream redrive``: which dead letters to send back, where, and the ledger of those sent.

A dead letter goes back to the topic its record came from (the ``studystream-source-topic`` header):
imaging.raw records to imaging.raw, study revisions to imaging.study.ready (also those dead-lettered
from the uploader's internal due topic or the retry topic). Completeness checks are not sent back:
the timer sends a new one for every pending study. The ledger remembers, per DLQ partition, the
offsets already sent back, so a second run with the same filters sends nothing twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

import orjson

from domain import dead_letters
from domain.errors import StudyStreamError
from domain.study import PATIENT_CONFLICT


class RedriveError(StudyStreamError):
    """A redrive that cannot be done (bad filter, unreadable ledger)."""


@dataclass(frozen=True, slots=True)
class RedriveFilter:
    stages: frozenset[str] = frozenset()  # empty: every stage
    study_uid: str = ""
    since_ms: int | None = None  # dead-lettered at or after (Kafka timestamp of the dead letter)
    until_ms: int | None = None  # dead-lettered before

    def matches(self, stage: str, study_uid: str, timestamp_ms: int) -> bool:
        return (
            (not self.stages or stage in self.stages)
            and (not self.study_uid or study_uid == self.study_uid)
            and (self.since_ms is None or timestamp_ms >= self.since_ms)
            and (self.until_ms is None or timestamp_ms < self.until_ms)
        )


def parse_time(text: str | None, option: str) -> int | None:
    """An ISO 8601 date-time with its UTC offset → epoch milliseconds."""
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise RedriveError(f"{option} {text!r} is not an ISO 8601 date-time") from None
    if parsed.tzinfo is None:
        raise RedriveError(f"{option} {text!r} has no UTC offset: add Z or e.g. +02:00")
    return int(parsed.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class Routes:
    """The topics a dead letter may go back to: name of the source topic → where it is sent."""

    raw: str
    ready: str
    to_ready: frozenset[str]  # the retry topic, the uploader's due topic

    def target(self, source_topic: str) -> str | None:
        if source_topic == self.raw:
            return self.raw
        if source_topic == self.ready or source_topic in self.to_ready:
            return self.ready
        return None


@dataclass(frozen=True, slots=True)
class Letter:
    """One record of the DLQ as read back."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes
    headers: Mapping[str, bytes]

    @property
    def stage(self) -> str:
        return dead_letters.text(self.headers, dead_letters.STAGE)

    @property
    def reason(self) -> str:
        return dead_letters.text(self.headers, dead_letters.REASON)

    @property
    def study_uid(self) -> str:
        return self.key.decode("ascii", "replace") if self.key else ""

    @property
    def source_topic(self) -> str:
        return dead_letters.text(self.headers, dead_letters.SOURCE_TOPIC)


@dataclass
class Ledger:
    """Per DLQ partition, the offsets already sent back, as sorted, merged [start, end) ranges."""

    ranges: dict[int, list[list[int]]] = field(default_factory=dict)

    def contains(self, partition: int, offset: int) -> bool:
        return any(start <= offset < end for start, end in self.ranges.get(partition, ()))

    def add(self, partition: int, offset: int) -> None:
        merged: list[list[int]] = []
        for start, end in sorted([*self.ranges.get(partition, []), [offset, offset + 1]]):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self.ranges[partition] = merged

    def encode(self) -> bytes:
        return orjson.dumps({"ranges": {str(p): r for p, r in sorted(self.ranges.items())}})

    @classmethod
    def decode(cls, raw: bytes | None) -> Ledger:
        if not raw:
            return cls()
        try:
            data = orjson.loads(raw)
            return cls({int(p): [[int(a), int(b)] for a, b in r] for p, r in data["ranges"].items()})
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            raise RedriveError("the redrive ledger on the control topic is unreadable") from None


@dataclass(frozen=True, slots=True)
class Planned:
    letter: Letter
    target: str | None  # None: not sent back (see ``why``)
    why: str = ""


def plan(letters: Iterable[Letter], chosen: RedriveFilter, routes: Routes, ledger: Ledger) -> list[Planned]:
    """The dead letters the filter selects, each with where it goes (or why it does not)."""
    planned = []
    for letter in letters:
        if not chosen.matches(letter.stage, letter.study_uid, letter.timestamp_ms):
            continue
        if ledger.contains(letter.partition, letter.offset):
            planned.append(Planned(letter, None, "already sent back"))
            continue
        if letter.reason == PATIENT_CONFLICT:
            planned.append(Planned(letter, None, "a patient conflict: decide it with `studystream resolve`"))
            continue
        target = routes.target(letter.source_topic)
        planned.append(Planned(letter, target, "" if target else f"source {letter.source_topic or '?'} not redriven"))
    return planned


def redrive_headers(letter: Letter, dlq_topic: str) -> list[tuple[str, bytes]]:
    """The original record's headers, and where it was sent back from."""
    headers = [(k, v) for k, v in dead_letters.original_headers(letter.headers) if k != dead_letters.REDRIVEN_FROM]
    headers.append((dead_letters.REDRIVEN_FROM, f"{dlq_topic}[{letter.partition}]@{letter.offset}".encode()))
    return headers


def render(planned: list[Planned]) -> str:
    lines = [f"{'dead letter':>14}  {'study':<40} {'stage':<10} {'reason':<20} target"]
    for item in planned:
        letter = item.letter
        where = item.target or f"(skipped: {item.why})"
        lines.append(
            f"{letter.partition:>6}@{letter.offset:<7}  {letter.study_uid[:40]:<40} {letter.stage[:10]:<10} "
            f"{letter.reason[:20]:<20} {where}"
        )
    sending = sum(1 for p in planned if p.target)
    lines.append(f"{sending} dead letter(s) to send back, {len(planned) - sending} skipped.")
    return "\n".join(lines)
