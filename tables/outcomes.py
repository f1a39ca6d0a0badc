"""The uploader's Faust table: the upload state of every study, for idempotency and the web view.

==================  ============  ===========================================================
table               key           value
==================  ============  ===========================================================
upload-outcomes     ``<study>``   :class:`domain.upload.UploadOutcome` (JSON, < 2 KB)
==================  ============  ===========================================================

Co-partitioned with ``imaging.study.ready`` (key = StudyInstanceUID) and written only by the
uploader agent while it handles a message of that study, through :class:`tables.store.TableStore`
(changelog acknowledged first), so each study's row lives on the partition that carries its ready events.
"""

from __future__ import annotations

from collections.abc import Iterator

import faust

from app.settings import Settings
from domain.study_state import study_key
from domain.upload import UploadOutcome, decode_outcome, encode_outcome
from tables.store import TableStore, Write
from tables.studies import declare_table

OUTCOMES_TABLE = "upload-outcomes"


class UploadOutcomes:
    def __init__(self, app: faust.App, settings: Settings, store: TableStore) -> None:
        self.store = store
        self.table = declare_table(
            app, settings, OUTCOMES_TABLE, "Upload state per study: published revision, status, reason, FHIR URL."
        )

    def changelog_topic_name(self) -> str:
        return self.table.changelog_topic.get_topic_name()

    def get(self, study_uid: str, partition: int | None = None) -> UploadOutcome | None:
        """The study's outcome: from its partition when known (the agent), else wherever this worker holds it."""
        key = study_key(study_uid)
        raw = self.table.get(key) if partition is None else self.store.get(self.table, partition, key)
        return decode_outcome(raw) if raw is not None else None

    async def put(self, outcome: UploadOutcome, partition: int) -> None:
        """Only inside the uploader agent, handling a message of ``outcome.study_uid`` on ``partition``."""
        await self.store.write([Write(self.table, partition, study_key(outcome.study_uid), encode_outcome(outcome))])

    def items(self) -> Iterator[UploadOutcome]:
        """Outcomes of the partitions this worker owns (the web view asks every worker)."""
        for _, raw, _ in self.store.owned_items(self.table):
            if raw is not None:
                yield decode_outcome(raw)
