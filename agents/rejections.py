"""The aggregator's log line for an IOCM rejection note (the rule is in :mod:`domain.rejection`).

The note is an instance event like any other: its row keeps the instances it names, which every
revision built from then on leaves out.
"""

from __future__ import annotations

import logging
from collections import Counter

from domain.events import InstanceEvent
from domain.rejection import REJECTION_CODES
from domain.study import StudyUpdate

log = logging.getLogger("studystream.agents.aggregator")


def on_rejection_note(event: InstanceEvent, update: StudyUpdate | None, counters: Counter[str]) -> None:
    """Count and log a rejection note the batch applied (UIDs, counts and codes only; a repeat: nothing)."""
    if update is None:
        return
    counters["rejection_notes"] += 1
    log.info(
        "study %s: rejection note %s (DCM %s %s) names %d instance(s), left out from revision %d",
        event.study_uid,
        event.sop_instance_uid,
        event.rejection_code,
        REJECTION_CODES.get(event.rejection_code, ""),
        len(event.rejected_uids),
        update.header.revision,
    )
