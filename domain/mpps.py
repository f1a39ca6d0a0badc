"""Modality Performed Procedure Step (PS3.4 Annex F.7), the receiver's pure half: datasets → a step's state.

No I/O here. The receiver (:mod:`scp.mpps`) decodes an N-CREATE's or N-SET's dataset, hands it to
:func:`read_change` (the trust boundary: every value checked, bounded, no patient data kept), and asks
:func:`create` or :func:`update` for the step's next state and the status to answer. A step set to
COMPLETED or DISCONTINUED becomes one :class:`~domain.events.PerformedProcedureStep` record
(:func:`step_record`).

What is kept of a step: its status, the study (the first StudyInstanceUID of the Scheduled Step
Attributes Sequence), the instances it names (Performed Series Sequence → Referenced Image Sequence and
Referenced Non-Image Composite SOP Instance Sequence) and a discontinuation reason's code value and
meaning. Nothing of the patient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from pydicom.dataset import Dataset

from domain.dicom_text import clean_text
from domain.errors import InvalidRecordError
from domain.events import MPPS_MAX_UIDS, PerformedProcedureStep, ShortText, Uid
from domain.uids import is_valid_uid

MPPS_SOP_CLASS = "1.2.840.10008.3.1.2.3.3"
IN_PROGRESS, COMPLETED, DISCONTINUED = "IN PROGRESS", "COMPLETED", "DISCONTINUED"
FINAL = (COMPLETED, DISCONTINUED)

# Statuses (PS3.7 Annex C, PS3.4 F.7.2.1.2 / F.7.2.2.2)
SUCCESS = 0x0000
INVALID_ATTRIBUTE_VALUE = 0x0106
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
NO_SUCH_OBJECT_INSTANCE = 0x0112
INVALID_OBJECT_INSTANCE = 0x0117
NO_SUCH_SOP_CLASS = 0x0118
MISSING_ATTRIBUTE = 0x0120
MISSING_ATTRIBUTE_VALUE = 0x0121
# An N-SET of a step already COMPLETED or DISCONTINUED: 0110H with this Error ID and comment (PS3.4 F.7.2.2.2).
NO_LONGER_UPDATABLE_ERROR_ID = 0xA710
NO_LONGER_UPDATABLE = "Performed Procedure Step Object may no longer be updated"

# Type 1 attributes of an N-CREATE (PS3.4 table F.7.2-1) the receiver insists on: present and not empty.
REQUIRED_ON_CREATE = (
    "PerformedProcedureStepID",
    "PerformedStationAETitle",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "Modality",
)
REASON_MAX_CHARS = 64  # LO


class MppsStep(msgspec.Struct, frozen=True, gc=False):
    """One step as the receiver keeps it between N-CREATE and the last N-SET (no patient data)."""

    uid: Uid
    status: ShortText
    study_uid: Uid
    sop_instance_uids: tuple[Uid, ...] = ()  # in the order the Performed Series Sequence names them
    truncated: bool = False  # the step named more instances than the receiver keeps (receiver_mpps_max_instances)
    reason_code: ShortText = ""  # DISCONTINUED: PerformedProcedureStepDiscontinuationReasonCodeSequence
    reason_meaning: ShortText = ""
    calling_ae: ShortText = ""
    created_at: ShortText = ""  # ISO 8601 UTC
    updated_at: ShortText = ""


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request the receiver refuses: the status and an Error Comment (at most 64 characters)."""

    status: int
    comment: str = ""
    error_id: int | None = None


@dataclass(frozen=True, slots=True)
class MppsChange:
    """What one N-CREATE or N-SET dataset says; ``None``: the attribute is not in the dataset."""

    status: str | None = None
    study_uid: str | None = None
    sop_instance_uids: tuple[str, ...] | None = None  # the Performed Series Sequence's instances
    truncated: bool = False
    reason: tuple[str, str] | None = None  # (code value, code meaning)
    missing: tuple[str, ...] = ()  # REQUIRED_ON_CREATE keywords absent ...
    empty: tuple[str, ...] = ()  # ... and present without a value


@dataclass(frozen=True, slots=True)
class Outcome:
    """A request's result: the step to keep (``None``: unchanged) and the status; ``final``: it just ended."""

    status: int
    step: MppsStep | None = None
    refusal: Refusal | None = None
    final: bool = False


class _Unreadable(ValueError):
    """A value StudyStream cannot use; the message names the attribute, never its value."""


def _refused(status: int, comment: str = "", error_id: int | None = None) -> Outcome:
    return Outcome(status, refusal=Refusal(status, comment[:64], error_id))


# --- Reading a dataset (the trust boundary) --------------------------------------------------------


def _text(ds: Dataset, keyword: str) -> str | None:
    if keyword not in ds:
        return None
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, bytes):
        raise _Unreadable(f"{keyword} is not text")
    return clean_text(str(value)).strip()


def _items(ds: Dataset, keyword: str) -> list[Dataset] | None:
    if keyword not in ds:
        return None
    value = ds.get(keyword)
    if value is None:
        return []
    if not all(isinstance(item, Dataset) for item in value):
        raise _Unreadable(f"{keyword} is not a sequence")
    return list(value)


def _study_uid(ds: Dataset) -> str | None:
    items = _items(ds, "ScheduledStepAttributesSequence")
    if not items:
        return None
    for item in items:
        uid = _text(item, "StudyInstanceUID")
        if uid:
            if not is_valid_uid(uid):
                raise _Unreadable("ScheduledStepAttributesSequence > StudyInstanceUID is not a UID")
            return uid
    return None


def _named_instances(ds: Dataset, max_instances: int) -> tuple[tuple[str, ...] | None, bool]:
    """The instances the Performed Series Sequence names (each once), at most ``max_instances``; truncated?"""
    series = _items(ds, "PerformedSeriesSequence")
    if series is None:
        return None, False
    found: dict[str, None] = {}
    for item in series:
        for keyword in ("ReferencedImageSequence", "ReferencedNonImageCompositeSOPInstanceSequence"):
            for ref in _items(item, keyword) or ():
                uid = _text(ref, "ReferencedSOPInstanceUID")
                if not uid or not is_valid_uid(uid):
                    raise _Unreadable(f"PerformedSeriesSequence > {keyword} > ReferencedSOPInstanceUID is not a UID")
                if uid not in found and len(found) >= max_instances:
                    return tuple(found), True
                found[uid] = None
    return tuple(found), False


def _reason(ds: Dataset) -> tuple[str, str] | None:
    items = _items(ds, "PerformedProcedureStepDiscontinuationReasonCodeSequence")
    if items is None:
        return None
    if not items:
        return ("", "")
    code = _text(items[0], "CodeValue") or ""
    meaning = _text(items[0], "CodeMeaning") or ""
    return code[:REASON_MAX_CHARS], meaning[:REASON_MAX_CHARS]


def read_change(ds: Dataset, max_instances: int) -> MppsChange | Refusal:
    """The attributes StudyStream uses of one N-CREATE / N-SET dataset, or the refusal of a malformed one."""
    max_instances = min(max_instances, MPPS_MAX_UIDS)
    try:
        status = _text(ds, "PerformedProcedureStepStatus")
        if status is not None:
            status = status.upper()
        instances, truncated = _named_instances(ds, max_instances)
        present = {keyword: _text(ds, keyword) for keyword in REQUIRED_ON_CREATE}
        return MppsChange(
            status=status,
            study_uid=_study_uid(ds),
            sop_instance_uids=instances,
            truncated=truncated,
            reason=_reason(ds),
            missing=tuple(k for k, v in present.items() if v is None),
            empty=tuple(k for k, v in present.items() if v == ""),
        )
    except Exception as exc:  # noqa: BLE001 - pydicom raises many exception types on malformed values
        detail = str(exc) if isinstance(exc, _Unreadable) else type(exc).__name__  # pydicom's may hold values
        return Refusal(INVALID_ATTRIBUTE_VALUE, f"unreadable attribute: {detail}"[:64])


# --- The state machine -----------------------------------------------------------------------------


def create(existing: MppsStep | None, uid: str, change: MppsChange, calling_ae: str, now: str) -> Outcome:
    """N-CREATE of step ``uid``: a new step IN PROGRESS, or the refusal."""
    if existing is not None:
        return _refused(DUPLICATE_SOP_INSTANCE, "the Performed Procedure Step exists already")
    if change.status is None:
        return _refused(MISSING_ATTRIBUTE, "PerformedProcedureStepStatus")
    if change.status != IN_PROGRESS:
        return _refused(INVALID_ATTRIBUTE_VALUE, "PerformedProcedureStepStatus must be IN PROGRESS")
    if change.study_uid is None:
        return _refused(MISSING_ATTRIBUTE, "ScheduledStepAttributesSequence > StudyInstanceUID")
    if change.missing:
        return _refused(MISSING_ATTRIBUTE, change.missing[0])
    if change.empty:
        return _refused(MISSING_ATTRIBUTE_VALUE, change.empty[0])
    reason = change.reason or ("", "")
    step = MppsStep(
        uid=uid,
        status=IN_PROGRESS,
        study_uid=change.study_uid,
        sop_instance_uids=change.sop_instance_uids or (),
        truncated=change.truncated,
        reason_code=reason[0],
        reason_meaning=reason[1],
        calling_ae=calling_ae[:16],
        created_at=now,
        updated_at=now,
    )
    return Outcome(SUCCESS, step=step)


def update(existing: MppsStep | None, change: MppsChange, now: str) -> Outcome:
    """N-SET of a step: its next state, or the refusal. A step COMPLETED or DISCONTINUED is final.

    The Scheduled Step Attributes cannot be changed by an N-SET (PS3.4 table F.7.2-1): they are ignored.
    """
    if existing is None:
        return _refused(NO_SUCH_OBJECT_INSTANCE, "no such Performed Procedure Step")
    if existing.status in FINAL:
        return _refused(PROCESSING_FAILURE, NO_LONGER_UPDATABLE, NO_LONGER_UPDATABLE_ERROR_ID)
    status = existing.status if change.status is None else change.status
    if status not in (IN_PROGRESS, *FINAL):
        return _refused(INVALID_ATTRIBUTE_VALUE, "PerformedProcedureStepStatus")
    changes: dict[str, Any] = {"status": status, "updated_at": now}
    if change.sop_instance_uids is not None:  # an N-SET replaces a sequence as a whole
        changes.update(sop_instance_uids=change.sop_instance_uids, truncated=change.truncated)
    if change.reason is not None:
        changes.update(reason_code=change.reason[0], reason_meaning=change.reason[1])
    step = msgspec.structs.replace(existing, **changes)
    if status == COMPLETED and not step.sop_instance_uids:
        return _refused(MISSING_ATTRIBUTE, "PerformedSeriesSequence > Referenced SOP Instance UIDs")
    return Outcome(SUCCESS, step=step, final=status in FINAL)


def step_record(step: MppsStep, received_at: str) -> PerformedProcedureStep:
    """The imaging.raw record of a step that ended (COMPLETED or DISCONTINUED)."""
    if step.status not in FINAL:
        raise ValueError("only a COMPLETED or DISCONTINUED step becomes a record")
    return PerformedProcedureStep(
        study_uid=step.study_uid,
        mpps_uid=step.uid,
        status=step.status,  # type: ignore[arg-type]  # one of FINAL, checked above
        sop_instance_uids=step.sop_instance_uids,
        truncated=step.truncated,
        reason_code=step.reason_code if step.status == DISCONTINUED else "",
        reason_meaning=step.reason_meaning if step.status == DISCONTINUED else "",
        calling_ae=step.calling_ae,
        received_at=received_at,
    )


# --- Storage of a step (the receiver's SQLite rows) ------------------------------------------------

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(MppsStep)


def encode_step(step: MppsStep) -> bytes:
    return _encoder.encode(step)


def decode_step(raw: bytes) -> MppsStep:
    try:
        return _decoder.decode(raw)
    except msgspec.MsgspecError as exc:
        raise InvalidRecordError(f"corrupt MPPS step: {exc}", reason="corrupt_state") from None
