"""Several studies in flight: each in its own association, in its own process.

pynetdicom spends ~3-4 ms of CPU per message and holds the GIL while doing it, so parallel associations
in one process level off near one core (see the field notes); processes scale with cores. Progress
events come back from the workers over a queue and reach the caller's callback in this process.
"""

from __future__ import annotations

import multiprocessing
import queue as queue_module
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from scu.scan import StudyBatch
from scu.sender import InstanceOutcome, Peer, ProgressCallback, SendPolicy, StudyResult, send_study

_POLL_SECONDS = 0.1


def send_studies(
    studies: Sequence[StudyBatch],
    peer: Peer,
    policy: SendPolicy,
    in_flight: int = 1,
    progress: ProgressCallback | None = None,
) -> list[StudyResult]:
    """Send ``studies`` with up to ``in_flight`` at once; results in the order of ``studies``."""
    report: ProgressCallback = progress or _no_progress
    if in_flight <= 1 or len(studies) <= 1:
        return [send_study(study, peer, policy, report) for study in studies]
    context = _worker_context()
    with context.Manager() as manager:
        events: Any = manager.Queue()
        with ProcessPoolExecutor(max_workers=min(in_flight, len(studies)), mp_context=context) as pool:
            futures = [pool.submit(_send_in_worker, study, peer, policy, events) for study in studies]
            pending: set[Future[StudyResult]] = set(futures)
            while pending:
                _done, pending = wait(pending, timeout=_POLL_SECONDS, return_when=FIRST_COMPLETED)
                _drain(events, report)
            _drain(events, report)
            return [_result_of(future, study) for future, study in zip(futures, studies, strict=True)]


def _worker_context() -> multiprocessing.context.BaseContext:
    # Not plain fork: the parent runs threads (progress display) that fork would copy mid-state. A fork
    # server that has already imported the sender starts workers in milliseconds instead of the ~1 s
    # each spawned interpreter spends importing pydicom and pynetdicom.
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["scu.sender"])
        return context
    return multiprocessing.get_context("spawn")


def _send_in_worker(study: StudyBatch, peer: Peer, policy: SendPolicy, events: Any) -> StudyResult:
    def forward(study_uid: str, outcome: InstanceOutcome) -> None:
        events.put((study_uid, outcome))

    return send_study(study, peer, policy, forward)


def _drain(events: Any, report: ProgressCallback) -> None:
    while True:
        try:
            study_uid, outcome = events.get_nowait()
        except queue_module.Empty:
            return
        report(study_uid, outcome)


def _result_of(future: Future[StudyResult], study: StudyBatch) -> StudyResult:
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001 - a crashed worker fails its study, never the whole run
        result = StudyResult(study.study_uid)
        reason = f"sender process failed: {type(exc).__name__}: {exc}"
        result.outcomes = [
            InstanceOutcome(str(i.path), i.sop_class_uid, i.sop_instance_uid, i.size, False, None, reason)
            for i in study.instances
        ]
        return result


def _no_progress(study_uid: str, outcome: InstanceOutcome) -> None:
    """The default progress callback."""
