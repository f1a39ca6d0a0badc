"""IHE IOCM rejection notes (pure): what a Key Object Selection document titled with a rejection code does.

A rejection note names instances of its study (its CurrentRequestedProcedureEvidenceSequence); from the
study's next revision on they are no longer listed, and neither is the note itself. A named instance not
received yet is remembered on the study's header and rejected when it arrives. Rows are never deleted:
an instance row records the revision that rejected it (``InstanceInfo.rejected_in``), so a sealed
revision is rebuilt the same after a restart and revisions only move forward. A study whose every
instance was rejected is shown on FHIR as ``entered-in-error`` (patient safety, wrong worklist entry)
or ``cancelled`` (quality, retention policy).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from domain.events import REJECTION_MAX_UIDS, InstanceEvent
from domain.study_state import InstanceInfo, StudyHeader

KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"
REJECTION_SCHEME = "DCM"
# PS3.16 CID 7011 "Rejected for Quality Reasons" and its siblings (IHE RAD TF-3 IOCM).
REJECTION_CODES: dict[str, str] = {
    "113001": "Rejected for Quality Reasons",
    "113037": "Rejected for Patient Safety Reasons",
    "113038": "Incorrect Modality Worklist Entry",
    "113039": "Data Retention Policy Expired",
}
ENTERED_IN_ERROR_CODES = frozenset({"113037", "113038"})  # the study should never have existed as it was


def rejection_code_of(sop_class_uid: str, scheme: str, code: str) -> str:
    """The rejection code a document's title carries ("" when the document is not a rejection note)."""
    if sop_class_uid != KEY_OBJECT_SELECTION or scheme.strip().upper() != REJECTION_SCHEME:
        return ""
    code = code.strip()
    return code if code in REJECTION_CODES else ""


def is_listed(instance: InstanceInfo, revision: int) -> bool:
    """Whether ``instance`` belongs to revision ``revision``: joined by then and not rejected by then."""
    return instance.revision <= revision and not 0 < instance.rejected_in <= revision


def emptied_status(codes: Iterable[str]) -> Literal["entered-in-error", "cancelled"]:
    """The FHIR ImagingStudy status of a study left with no instance by the rejection notes ``codes``."""
    return "entered-in-error" if ENTERED_IN_ERROR_CODES.intersection(codes) else "cancelled"


def _with_code(codes: tuple[str, ...], code: str) -> tuple[str, ...]:
    return codes if code in codes else (*codes, code)


def on_arrival(header: StudyHeader, event: InstanceEvent, known: InstanceInfo | None) -> tuple[dict[str, Any], bool]:
    """What one arriving instance changes in its study's rejections, and whether its row is rejected.

    A row is rejected when it is a rejection note itself, when a note named it before it arrived, or
    when it is a new version of an instance already rejected (a re-send does not bring it back).
    """
    changes: dict[str, Any] = {}
    rejected = bool(event.rejection_code) or (known is not None and known.rejected_in > 0)
    if event.sop_instance_uid in header.rejection_waiting:
        changes["rejection_waiting"] = tuple(u for u in header.rejection_waiting if u != event.sop_instance_uid)
        rejected = True
    if event.rejection_code:
        changes["rejection_codes"] = _with_code(header.rejection_codes, event.rejection_code)
    return changes, rejected


def rejected_in(rejected: bool, known: InstanceInfo | None, revision: int) -> int:
    """The ``rejected_in`` of an arriving row: kept from the row it replaces, else the open revision."""
    if not rejected:
        return 0
    return known.rejected_in if known is not None and known.rejected_in > 0 else revision


def reject(
    header: StudyHeader, named: Iterable[tuple[str, InstanceInfo | None]], code: str
) -> tuple[dict[str, Any], list[InstanceInfo]]:
    """A rejection note's effect on its study: header changes and the rows it newly rejects.

    ``named`` pairs each instance the note names with its row (``None``: not received yet, so awaited).
    The rows are returned without their ``rejected_in``: the caller sets the revision they leave in
    (the open one, or the next when the study's current revision was already sealed).
    """
    rows: list[InstanceInfo] = []
    waiting = list(header.rejection_waiting)
    awaited = set(waiting)
    for uid, row in named:
        if row is None:
            if uid not in awaited and len(waiting) < REJECTION_MAX_UIDS:
                waiting.append(uid)
                awaited.add(uid)
        elif row.rejected_in == 0:
            rows.append(row)
    changes: dict[str, Any] = {"rejection_codes": _with_code(header.rejection_codes, code)}
    if len(waiting) != len(header.rejection_waiting):
        changes["rejection_waiting"] = tuple(waiting)
    return changes, rows
