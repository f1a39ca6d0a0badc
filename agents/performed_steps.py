"""The aggregator's handling of a ``performed_procedure_step`` record (a thin shell over :mod:`domain.batch`).

A COMPLETED Modality Performed Procedure Step names the study's instances: the study is ready as soon as
every one is in (those not read yet are awaited, the quiet period waiting for them at most
``aggregator_mpps_timeout``); a DISCONTINUED one is recorded with its reason (the web view shows it).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

from domain.batch import BatchState, apply_performed_step
from domain.events import PerformedProcedureStep as PerformedProcedureStep  # re-exported for the dispatch

log = logging.getLogger("studystream.agents.aggregator")


def on_performed_step(
    message: Any, step: PerformedProcedureStep, batch: BatchState, counters: Counter[str], timeout: float
) -> None:
    """Apply one record to the batch and log what it did (UIDs, counts and codes only)."""
    outcome = apply_performed_step(batch, step, message.partition, message.offset, time.time() + timeout)
    study_uid, uid = step.study_uid, step.mpps_uid
    if not outcome.known_study:
        counters["mpps_unknown_study"] += 1
        log.info("study %s: MPPS %s %s for a study not seen yet: ignored", study_uid, uid, step.status)
    elif not outcome.changed:
        return
    elif step.status == "DISCONTINUED":
        counters["mpps_discontinued"] += 1
        log.info("study %s: MPPS %s DISCONTINUED (reason code %r)", study_uid, uid, step.reason_code)
    elif step.truncated or not step.sop_instance_uids:
        counters["mpps_incomplete"] += 1
        log.info(
            "study %s: MPPS %s COMPLETED without its whole instance list: the quiet period decides", study_uid, uid
        )
    elif outcome.missing:
        counters["mpps_waiting"] += 1
        log.info(
            "study %s: MPPS %s COMPLETED names %d instance(s) not seen yet; complete when they arrive (at most %.0f s)",
            study_uid,
            uid,
            outcome.missing,
            timeout,
        )
    else:
        counters["mpps_completed"] += 1
        log.info(
            "study %s: MPPS %s COMPLETED with all %d instance(s) in, ready now",
            study_uid,
            uid,
            len(step.sop_instance_uids),
        )
