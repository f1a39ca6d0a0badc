"""The aggregator's handling of an IOCM rejection note (a thin shell over :func:`domain.batch.apply_rejection`).

The note is an instance event like any other (applied first, never listed); its marks leave the
instances it names out of the study's next revision, and those not read yet are rejected on arrival.
"""

from __future__ import annotations

import logging
from collections import Counter

from domain.batch import BatchState, apply_rejection
from domain.events import InstanceEvent
from domain.rejection import REJECTION_CODES

log = logging.getLogger("studystream.agents.aggregator")


def on_rejection_note(event: InstanceEvent, batch: BatchState, partition: int, counters: Counter[str]) -> None:
    """Apply a rejection note's marks to the batch and log what they did (UIDs, counts and codes only)."""
    rejected = apply_rejection(batch, event, partition)
    if not rejected:
        return
    counters["rejected_instances"] += rejected
    header = batch.header(event.study_uid, partition)
    log.info(
        "study %s: rejection note %s (DCM %s %s) rejects %d instance(s) from revision %d; %d named not seen yet",
        event.study_uid,
        event.sop_instance_uid,
        event.rejection_code,
        REJECTION_CODES.get(event.rejection_code, ""),
        rejected,
        header.revision if header is not None else 0,
        len(header.rejection_waiting) if header is not None else 0,
    )
