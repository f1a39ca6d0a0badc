"""One STOW-RS part through the C-STORE path, and a complete request's boundary records (thread pool).

:func:`store_part` is :func:`scp.association.store_instance` for a part that arrived over HTTP: the staged
file (the part's bytes as received, a PS3.10 file) is identified from its own File Meta, checked against
the study the URL names, committed durably (outbox row, fsync, rename) and released to the publisher,
so its event reaches ``imaging.raw`` exactly as a C-STORE's does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from domain.events import encode_stow_boundary
from domain.statuses import StoreRefused
from domain.stow import PART10_HEAD_BYTES, Part10Meta, PartOutcome, boundary_records, part10_meta
from scp.cstore import Arrival, StagedInstance, account_stored, commit_durably, identify

log = logging.getLogger(f"studystream.{__name__}")


@dataclass(frozen=True, slots=True)
class HttpReception:
    """What the request tells about each of its parts besides their bytes."""

    calling_ae: str  # receiver_dicomweb_calling_ae
    called_ae: str  # the receiver's AE title
    peer_address: str
    study_uid: str | None  # the study the URL names: an instance of another one fails
    request_uid: str


def _meta(path: Path) -> Part10Meta:
    with path.open("rb") as handle:
        meta = part10_meta(handle.read(PART10_HEAD_BYTES))
    if meta is None:
        raise StoreRefused("not_dicom", "not a PS3.10 file (no DICM prefix or File Meta unreadable)")
    return meta


def _refused(meta: Part10Meta | None, study_uid: str, refusal: StoreRefused, reception: HttpReception) -> PartOutcome:
    log.warning(
        "STOW-RS %s: instance %s refused: 0x%04X %s (%s)",
        reception.request_uid,
        meta.sop_instance[:64] if meta else "?",
        refusal.status,
        refusal.reason,
        refusal.detail,
    )
    return PartOutcome(
        sop_class=meta.sop_class if meta else "",
        sop_instance=meta.sop_instance if meta else "",
        study_uid=study_uid,
        failure=refusal.status,
        reason=refusal.reason,
    )


def store_part(deps: Any, staged: StagedInstance, reception: HttpReception) -> PartOutcome:
    """Identify, check and commit one complete part (``deps``: :class:`scp.association.ReceiverDeps`)."""
    path: Path | None = None
    meta: Part10Meta | None = None
    study_uid = ""
    try:
        path = staged.finish()
        meta = _meta(path)
        arrival = Arrival(
            meta.sop_class,
            meta.sop_instance,
            meta.transfer_syntax,
            reception.calling_ae,
            reception.called_ae,
            reception.peer_address,
        )
        event, target = identify(staged, path, arrival, deps.store, deps.limits)
        study_uid = event.study_uid
        if reception.study_uid is not None and event.study_uid != reception.study_uid:
            raise StoreRefused("study_mismatch", f"instance of study {event.study_uid[:64]}")
        stored, row_id = commit_durably(path, event, target, deps.store, deps.outbox)
    except StoreRefused as refusal:
        return _refused(meta, study_uid, refusal, reception)
    except Exception as exc:
        log.exception("STOW-RS %s: instance failed: %s", reception.request_uid, type(exc).__name__)
        return _refused(meta, study_uid, StoreRefused("storage_error", type(exc).__name__), reception)
    finally:
        if path is not None:
            path.unlink(missing_ok=True)  # renamed away on success; otherwise the partial file must not linger
    account_stored(deps.index, deps.metrics, event, target, stored, "STOW-RS")
    deps.outbox.release(row_id)
    return PartOutcome(event.sop_class_uid, event.sop_instance_uid, event.study_uid)


def add_boundaries(deps: Any, reception: HttpReception, outcomes: list[PartOutcome], max_uids: int) -> int:
    """The request's ``stow_request`` records, one per study (in parts), after its instance events; the count.

    Best effort: without them the studies complete by their quiet period, as without the setting.
    """
    received_at = datetime.now(UTC).isoformat(timespec="milliseconds")
    records = boundary_records(reception.request_uid, outcomes, reception.calling_ae, received_at, max_uids)
    added = 0
    for record in records:
        try:
            deps.outbox.add_record(record.study_uid, encode_stow_boundary(record))
            added += 1
        except Exception as exc:  # noqa: BLE001 - SQLite or disk: the instances are stored either way
            log.warning(
                "STOW-RS %s: study boundary of %s not recorded (%s)", reception.request_uid, record.study_uid, exc
            )
    return added
