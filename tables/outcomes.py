"""The uploader's Faust table: the upload state of every study, for idempotency and the web view.

==================  ============  ===========================================================
table               key           value
==================  ============  ===========================================================
upload-outcomes     ``<study>``   :class:`domain.upload.UploadOutcome` (JSON, < 2 KB)
==================  ============  ===========================================================

Co-partitioned with ``imaging.study.ready`` (key = StudyInstanceUID) and written only by the
uploader agent while it handles a message of that study, so each study's row lives on the
partition that carries its ready events.
"""

from __future__ import annotations

from collections.abc import Iterator

import faust

from app.settings import Settings
from domain.study import study_key
from domain.upload import UploadOutcome, decode_outcome, encode_outcome
from tables.studies import _rocksdb_options

OUTCOMES_TABLE = "upload-outcomes"


class UploadOutcomes:
    def __init__(self, app: faust.App, settings: Settings) -> None:
        self.table = app.Table(
            OUTCOMES_TABLE,
            partitions=settings.topic_partitions,
            key_type=bytes,  # raw codec: values are domain-encoded JSON
            value_type=bytes,
            options=_rocksdb_options(settings),
            help="Upload state per study: published revision, status, reason, FHIR URL.",
        )

    def changelog_topic_name(self) -> str:
        return self.table.changelog_topic.get_topic_name()

    def get(self, study_uid: str) -> UploadOutcome | None:
        raw = self.table.get(study_key(study_uid))
        return decode_outcome(raw) if raw is not None else None

    def put(self, outcome: UploadOutcome) -> None:
        """Only inside the uploader agent, handling a message keyed by ``outcome.study_uid``."""
        self.table[study_key(outcome.study_uid)] = encode_outcome(outcome)

    def items(self) -> Iterator[UploadOutcome]:
        """Outcomes of the partitions this worker owns (the web view asks every worker)."""
        for raw in self.table.values():
            yield decode_outcome(raw)
