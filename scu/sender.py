"""Send studies over DICOM associations with pynetdicom, files as they are on disk.

Each study gets its own association(s) (see :func:`scu.scan.plan_associations`). Files are sent with
pynetdicom's chunked path (``_config.STORE_SEND_CHUNKED_DATASET``): ``send_c_store(path)`` streams the
bytes after the File Meta Information in PDU-sized pieces, so the data set goes out bit for bit, never
decoded and re-encoded. That needs an exactly matching context, hence one transfer syntax per context.

A lost or refused association is retried with exponential backoff; instances already stored are not sent
again. A file whose context the peer rejects, or that gets a failure status, is reported with the reason.
Running several studies at once is :mod:`scu.runner`'s job.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import StorageCommitmentPushModel, StorageCommitmentPushModelInstance, Verification
from pynetdicom.status import code_to_category

from app.settings import Settings
from domain import statuses
from scu import commitment
from scu.errors import AssociationFailed
from scu.pynetdicom_hooks import ParkedCheckpoint, park_reactor, use_chunked_send
from scu.scan import (
    MAX_CONTEXTS_PER_ASSOCIATION,
    AssociationPlan,
    ContextKey,
    InstanceFile,
    StudyBatch,
    plan_associations,
)

log = logging.getLogger(f"studystream.{__name__}")

_CONTEXT_RESULTS = {
    0x01: "presentation context rejected by the peer (user rejection)",
    0x02: "presentation context rejected by the peer (no reason given)",
    0x03: "presentation context rejected: SOP class not supported by the peer",
    0x04: "presentation context rejected: transfer syntax not supported by the peer",
}
_STORED_CATEGORIES = ("Success", "Warning")


@dataclass(frozen=True, slots=True)
class Peer:
    host: str
    port: int
    called_ae: str
    calling_ae: str


@dataclass(frozen=True, slots=True)
class SendPolicy:
    """Limits of one send run; :meth:`from_settings` fills them from the ``sender_*`` settings."""

    max_pdu: int = 131072
    max_contexts: int = MAX_CONTEXTS_PER_ASSOCIATION
    retries: int = 3
    retry_backoff: float = 1.0
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    storage_commitment: bool = False
    commitment_timeout: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> SendPolicy:
        policy = cls(
            max_pdu=settings.sender_max_pdu,
            max_contexts=settings.sender_max_contexts,
            retries=settings.sender_retries,
            retry_backoff=settings.sender_retry_backoff,
            acse_timeout=settings.sender_acse_timeout,
            dimse_timeout=settings.sender_dimse_timeout,
            network_timeout=settings.sender_network_timeout,
            commitment_timeout=settings.sender_commitment_timeout,
        )
        return replace(policy, **overrides)

    @property
    def contexts_per_association(self) -> int:
        # The Storage Commitment context takes one of the 128 places.
        room = MAX_CONTEXTS_PER_ASSOCIATION - 1 if self.storage_commitment else MAX_CONTEXTS_PER_ASSOCIATION
        return min(self.max_contexts, room)


@dataclass(frozen=True, slots=True)
class InstanceOutcome:
    path: str
    sop_class_uid: str
    sop_instance_uid: str
    size: int
    stored: bool
    status: int | None
    reason: str


@dataclass(slots=True)
class StudyResult:
    study_uid: str
    outcomes: list[InstanceOutcome] = field(default_factory=list)
    associations: int = 0
    retries: int = 0
    seconds: float = 0.0
    commitment: str = ""

    @property
    def stored(self) -> int:
        return sum(1 for outcome in self.outcomes if outcome.stored)

    @property
    def failed(self) -> int:
        return sum(1 for outcome in self.outcomes if not outcome.stored)


ProgressCallback = Callable[[str, InstanceOutcome], None]


def _ignore_progress(study_uid: str, outcome: InstanceOutcome) -> None:
    """The default progress callback."""


def _set_tcp_nodelay(event: evt.Event) -> None:
    # Without it every C-STORE waits ~40 ms on the peer's delayed ACK (Nagle).
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _on_commitment_report(event: evt.Event, waiter: commitment.ReportWaiter) -> tuple[int, Dataset | None]:
    try:
        info = event.event_information
    except Exception:  # noqa: BLE001 - a report we cannot decode still must be answered, never raised into pynetdicom
        log.warning("undecodable Storage Commitment report")
        info = None
    waiter.deliver(commitment.read_report(int(event.request.EventTypeID or 0), info))
    return 0x0000, None


def _outcome(instance: InstanceFile, stored: bool, status: int | None, reason: str) -> InstanceOutcome:
    return InstanceOutcome(
        str(instance.path), instance.sop_class_uid, instance.sop_instance_uid, instance.size, stored, status, reason
    )


def store_outcome(instance: InstanceFile, status: Dataset) -> InstanceOutcome | None:
    """The outcome of one C-STORE response, or None when there was none (association lost)."""
    code = getattr(status, "Status", None)
    if code is None:
        return None
    category = code_to_category(int(code))
    comment = str(status.get("ErrorComment", "") or "")
    stored = category in _STORED_CATEGORIES
    reason = "" if category == "Success" else f"status 0x{int(code):04X} ({category})"
    meaning = statuses.describe(int(code))
    if meaning and not stored:
        reason = f"{reason}: {meaning}"
    if comment:
        reason = f"{reason}: {comment}" if reason else comment
    return _outcome(instance, stored, int(code), reason)


def open_association(
    peer: Peer, policy: SendPolicy, contexts: Sequence[ContextKey], waiter: commitment.ReportWaiter | None
) -> Association:
    """Propose one context per (SOP class, transfer syntax); raise :class:`AssociationFailed` if none results."""
    ae = AE(ae_title=peer.calling_ae)
    ae.maximum_pdu_size = policy.max_pdu
    ae.acse_timeout = policy.acse_timeout
    ae.dimse_timeout = policy.dimse_timeout
    ae.network_timeout = policy.network_timeout
    ae.connection_timeout = policy.acse_timeout
    for sop_class, transfer_syntax in contexts:
        ae.add_requested_context(sop_class, transfer_syntax)
    handlers: list[Any] = [(evt.EVT_CONN_OPEN, _set_tcp_nodelay)]
    if waiter is not None:
        ae.add_requested_context(StorageCommitmentPushModel, ImplicitVRLittleEndian)
        handlers.append((evt.EVT_N_EVENT_REPORT, _on_commitment_report, [waiter]))
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.called_ae, evt_handlers=handlers)
    if assoc.is_established:
        return assoc
    if assoc.is_rejected:
        primitive = assoc.acceptor.primitive
        result = getattr(primitive, "result", None)
        detail = f"{getattr(primitive, 'result_str', '')}: {getattr(primitive, 'reason_str', '')}".strip(": ")
        raise AssociationFailed(f"association rejected ({detail})", permanent=result == 0x01)
    if assoc.rejected_contexts and not assoc.accepted_contexts:
        raise AssociationFailed("every presentation context was rejected", permanent=True)
    raise AssociationFailed(f"no association with {peer.host}:{peer.port} (refused, aborted or timed out)")


def context_verdicts(assoc: Association) -> dict[ContextKey, str]:
    """For each proposed storage context: '' when accepted, else why it was rejected."""
    requested = assoc.requestor.requested_contexts
    proposed = {cx.context_id: (str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in requested}
    verdicts: dict[ContextKey, str] = {}
    for cx in assoc.rejected_contexts:
        key = proposed.get(cx.context_id)
        if key:
            verdicts[key] = _CONTEXT_RESULTS.get(cx.result, f"presentation context rejected (result {cx.result})")
    for cx in assoc.accepted_contexts:
        key = proposed.get(cx.context_id)
        if key:
            verdicts[key] = ""
    return verdicts


def _send_plan(
    plan: AssociationPlan,
    peer: Peer,
    policy: SendPolicy,
    result: StudyResult,
    progress: ProgressCallback,
    commit: bool,
) -> None:
    """Send one association's worth of files, retrying lost associations for what is not yet stored."""
    remaining = list(plan.instances)
    attempt = 0
    while remaining:
        waiter = commitment.ReportWaiter() if commit else None
        try:
            assoc = open_association(peer, policy, plan.contexts, waiter)
        except AssociationFailed as exc:
            if exc.permanent or attempt >= policy.retries:
                rejected = exc.reason if exc.permanent else f"{exc.reason}; gave up after {attempt + 1} attempt(s)"
                if "every presentation context" in exc.reason:
                    rejected = "presentation context rejected by the peer"
                for instance in remaining:
                    _record(result, progress, _outcome(instance, False, None, rejected))
                return
            _back_off(policy, attempt, result, exc.reason)
            attempt += 1
            continue
        result.associations += 1
        checkpoint: ParkedCheckpoint | None = None
        try:
            checkpoint = park_reactor(assoc, policy.acse_timeout)
            remaining = _store_all(assoc, remaining, result, progress)
            if not remaining and commit:
                stored = [outcome for outcome in result.outcomes if outcome.stored]
                result.commitment = _request_commitment(assoc, policy, stored, waiter, checkpoint)
        except AssociationFailed as exc:
            log.warning("study %s: %s", result.study_uid, exc.reason)
        finally:
            if checkpoint is not None:
                checkpoint.release()
            if assoc.is_established:
                assoc.release()
        if remaining:
            if attempt >= policy.retries:
                for instance in remaining:
                    _record(result, progress, _outcome(instance, False, None, "association lost; retries exhausted"))
                return
            _back_off(policy, attempt, result, "association lost")
            attempt += 1


def _store_all(
    assoc: Association, instances: list[InstanceFile], result: StudyResult, progress: ProgressCallback
) -> list[InstanceFile]:
    """Store what the association can take; returns what is still to send when the association is lost."""
    verdicts = context_verdicts(assoc)
    for index, instance in enumerate(instances):
        verdict = verdicts.get(instance.context_key, "presentation context not negotiated")
        if verdict:
            _record(result, progress, _outcome(instance, False, None, verdict))
            continue
        try:
            status = assoc.send_c_store(instance.path)
        except (OSError, ValueError, AttributeError) as exc:
            # The file changed or vanished since the scan: this file fails, the study goes on.
            _record(result, progress, _outcome(instance, False, None, f"cannot send file: {type(exc).__name__}: {exc}"))
            continue
        outcome = store_outcome(instance, status)
        if outcome is None:
            return instances[index:]
        _record(result, progress, outcome)
    return []


def _request_commitment(
    assoc: Association,
    policy: SendPolicy,
    stored: list[InstanceOutcome],
    waiter: commitment.ReportWaiter | None,
    checkpoint: ParkedCheckpoint,
) -> str:
    if waiter is None or not any(cx.abstract_syntax == StorageCommitmentPushModel for cx in assoc.accepted_contexts):
        return "not supported by the peer"
    transaction_uid = generate_uid()
    request = commitment.build_request(transaction_uid, [(o.sop_class_uid, o.sop_instance_uid) for o in stored])
    status, _reply = assoc.send_n_action(
        request, commitment.COMMIT_REQUEST_ACTION, StorageCommitmentPushModel, StorageCommitmentPushModelInstance
    )
    code = getattr(status, "Status", None)
    if code is None or code_to_category(int(code)) not in _STORED_CATEGORIES:
        return "request failed" if code is None else f"request refused (status 0x{int(code):04X})"
    checkpoint.release()  # the reactor serves the peer's N-EVENT-REPORT
    report = waiter.wait(transaction_uid, policy.commitment_timeout)
    return report.describe() if report else "requested (no result on this association)"


def _record(result: StudyResult, progress: ProgressCallback, outcome: InstanceOutcome) -> None:
    result.outcomes.append(outcome)
    progress(result.study_uid, outcome)


def _back_off(policy: SendPolicy, attempt: int, result: StudyResult, reason: str) -> None:
    delay = policy.retry_backoff * (2**attempt)
    log.warning("study %s: %s; retry %d in %.1f s", result.study_uid, reason, attempt + 1, delay)
    result.retries += 1
    time.sleep(delay)


def send_study(
    study: StudyBatch, peer: Peer, policy: SendPolicy, progress: ProgressCallback = _ignore_progress
) -> StudyResult:
    """Send every instance of one study; never raises for network or peer trouble (it is in the result)."""
    use_chunked_send()
    started = time.monotonic()
    result = StudyResult(study.study_uid)
    plans = plan_associations(study, policy.contexts_per_association)
    for number, plan in enumerate(plans, start=1):
        # Commitment is asked once per study, on its last association, for everything stored so far.
        _send_plan(plan, peer, policy, result, progress, policy.storage_commitment and number == len(plans))
    result.seconds = time.monotonic() - started
    return result


def echo(peer: Peer, policy: SendPolicy) -> tuple[bool, str]:
    """C-ECHO the peer: (worked, what happened)."""
    ae = AE(ae_title=peer.calling_ae)
    ae.acse_timeout = policy.acse_timeout
    ae.dimse_timeout = policy.dimse_timeout
    ae.network_timeout = policy.network_timeout
    ae.connection_timeout = policy.acse_timeout
    ae.add_requested_context(Verification)
    assoc = ae.associate(
        peer.host, peer.port, ae_title=peer.called_ae, evt_handlers=[(evt.EVT_CONN_OPEN, _set_tcp_nodelay)]
    )
    if not assoc.is_established:
        state = "rejected" if assoc.is_rejected else "refused, aborted or timed out"
        return False, f"no association with {peer.called_ae}@{peer.host}:{peer.port} ({state})"
    try:
        status = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    code = getattr(status, "Status", None)
    if code is None:
        return False, "no C-ECHO response"
    return int(code) == 0x0000, f"C-ECHO status 0x{int(code):04X}"
