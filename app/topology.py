"""Every topic StudyStream uses, declared once: name, partitions, configuration, and whether it is a
public interface (other systems read or write it) or internal to one app id.

The tables' changelog topics are Faust's (named after the app id and table) and created from the
tables themselves; everything else is here. Pure: names and configurations from the settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from app.settings import Settings

COMPACT = {"cleanup.policy": "compact"}


@dataclass(frozen=True, slots=True)
class TopicDecl:
    name: str
    partitions: int
    public: bool  # a documented interface (imaging.raw, imaging.study.ready, imaging.dlq, the retry line)
    purpose: str
    config: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Topology:
    raw: TopicDecl
    ready: TopicDecl
    dlq: TopicDecl
    retry: TopicDecl
    check: TopicDecl
    due: TopicDecl
    control: TopicDecl

    @property
    def public(self) -> tuple[TopicDecl, ...]:
        """What a producer or consumer of StudyStream needs before anything flows (``ensure_topics``)."""
        return (self.raw, self.ready, self.dlq)

    @property
    def worker_inputs(self) -> tuple[str, ...]:
        """The topics a worker consumes (the input watchdog watches each)."""
        return (self.raw.name, self.check.name, self.ready.name, self.retry.name, self.due.name)


def topology(settings: Settings) -> Topology:
    partitions = settings.topic_partitions
    sized = {"max.message.bytes": str(settings.max_message_bytes)}

    def decl(name: str, public: bool, purpose: str, config: Mapping[str, str] = sized, count: int = 0) -> TopicDecl:
        return TopicDecl(name, count or partitions, public, purpose, dict(config))

    return Topology(
        raw=decl(settings.topic_raw, True, "one event per stored instance, keyed by StudyInstanceUID"),
        ready=decl(settings.topic_ready, True, "one record per complete study revision"),
        dlq=decl(settings.topic_dlq, True, "records no stage could handle, with the reason in headers"),
        retry=decl(settings.topic_retry, True, "study revisions parked until the FHIR server answers again"),
        check=decl(f"{settings.app_id}-study-check", False, "the completeness timer's commands to the aggregator", {}),
        due=decl(f"{settings.app_id}-upload-due", False, "parked revisions that are due, back to the uploader"),
        control=decl(settings.topic_control, False, "the state generation every worker starts with", COMPACT, 1),
    )
