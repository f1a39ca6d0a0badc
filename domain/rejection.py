"""IHE IOCM rejection notes (pure): what a Key Object Selection document titled with a rejection code does.

A rejection note names instances of its study (its CurrentRequestedProcedureEvidenceSequence). The note
is an instance of the study like any other (a new one opens the next revision of a published study),
whose row keeps its code and the instances it names; which instances a revision lists is derived from
the rows when the revision is built (:func:`listed_instances`), so nothing is marked or deleted: an
instance named before it arrives is left out as well, a rejected instance sent again stays out, a
sealed revision is rebuilt the same after a restart, and a replayed batch cannot half-apply a note. A
study whose every instance was rejected is shown on FHIR as ``entered-in-error`` (patient safety, wrong
worklist entry) or ``cancelled`` (quality, retention policy).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # the receiver reads KEY_OBJECT_SELECTION and the codes: not the state's heavy imports
    from domain.events import InstanceEvent
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


def emptied_status(codes: Iterable[str]) -> Literal["entered-in-error", "cancelled"]:
    """The FHIR ImagingStudy status of a study left with no instance by the rejection notes ``codes``."""
    return "entered-in-error" if ENTERED_IN_ERROR_CODES.intersection(codes) else "cancelled"


def on_arrival(header: StudyHeader, event: InstanceEvent) -> dict[str, Any]:
    """What one arriving instance changes in its study's header: a rejection note's code is recorded."""
    if not event.rejection_code or event.rejection_code in header.rejection_codes:
        return {}
    return {"rejection_codes": (*header.rejection_codes, event.rejection_code)}


def listed_instances(instances: Iterable[InstanceInfo], revision: int) -> tuple[list[InstanceInfo], list[str]]:
    """The instances revision ``revision`` lists, and the codes of the rejection notes it holds.

    Listed: joined by then (``InstanceInfo.revision``), not a rejection note, and named by no note that
    joined by then, whenever the named instance itself arrived (before the note, or after it).
    """
    rows = list(instances)
    notes = [row for row in rows if row.rejection_code and row.revision <= revision]
    rejected = {uid for note in notes for uid in note.rejects}
    listed = [row for row in rows if row.revision <= revision and not row.rejection_code and row.uid not in rejected]
    return listed, list(dict.fromkeys(note.rejection_code for note in notes))
