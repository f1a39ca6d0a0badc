"""The records published to ``imaging.raw`` and their wire format.

Two kinds, both JSON objects (UTF-8) keyed by the StudyInstanceUID: one :class:`InstanceEvent` per
stored instance, and a :class:`CommitmentRequest` when a sender asked for Storage Commitment of
instances of the study (``"record_type": "storage_commitment"``; instance events carry no record type).
Readers decode with :func:`decode_raw_record` (or :func:`decode_instance_event`), which turn every
malformed message into :class:`InvalidEventError` so the caller can dead-letter it instead of crashing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import orjson

from domain.errors import InvalidEventError

EVENT_SCHEMA_VERSION = 1
REQUIRED_FIELDS = ("study_uid", "series_uid", "sop_instance_uid", "sop_class_uid")


@dataclass(frozen=True, slots=True)
class CodedValue:
    """A DICOM code sequence item (code value, coding scheme designator, code meaning)."""

    code: str
    scheme: str = ""
    meaning: str = ""


@dataclass(frozen=True, slots=True)
class InstanceEvent:
    """Everything StudyStream needs to know about one received instance (no pixel data)."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str = ""
    instance_number: int | None = None
    series_number: int | None = None
    modality: str = ""
    # Study level
    study_date: str = ""  # DICOM DA, YYYYMMDD
    study_time: str = ""  # DICOM TM
    timezone_offset: str = ""  # TimezoneOffsetFromUTC, +HHMM / -HHMM
    study_id: str = ""
    study_description: str = ""
    accession_number: str = ""
    accession_issuer: str = ""
    referring_physician: str = ""
    procedure_codes: tuple[CodedValue, ...] = ()
    institution: str = ""
    # Patient level (PHI: never logged)
    patient_id: str = ""
    issuer_of_patient_id: str = ""
    patient_name: str = ""  # decoded to Unicode, all component groups joined by '='
    birth_date: str = ""
    sex: str = ""
    # Series level
    series_description: str = ""
    series_date: str = ""
    series_time: str = ""
    body_part_examined: str = ""
    laterality: str = ""
    performing_physician: str = ""
    operators_name: str = ""
    manufacturer: str = ""
    model: str = ""
    # Instance level
    instance_title: str = ""
    # Reception
    calling_ae: str = ""
    called_ae: str = ""
    peer_address: str = ""
    received_at: str = ""  # ISO 8601 UTC
    stored_path: str = ""
    size: int = 0
    sha256: str = ""
    duplicate: bool = False  # same SOP Instance UID and identical bytes as an earlier instance
    replaced: bool = False  # same SOP Instance UID, different bytes: the stored file was replaced
    schema_version: int = EVENT_SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> bytes:
        """The Kafka key: the StudyInstanceUID, so every instance of a study lands on one partition."""
        return self.study_uid.encode("ascii")


_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(InstanceEvent))


def encode_instance_event(event: InstanceEvent) -> bytes:
    """The JSON bytes published to ``imaging.raw``."""
    return orjson.dumps(dataclasses.asdict(event))


COMMITMENT_RECORD_TYPE = "storage_commitment"


@dataclass(frozen=True, slots=True)
class CommitmentRequest:
    """A Storage Commitment request's instances of one study, all stored: the study is complete now."""

    study_uid: str
    transaction_uid: str
    sop_instance_uids: tuple[str, ...]
    calling_ae: str = ""
    received_at: str = ""  # ISO 8601 UTC
    record_type: str = COMMITMENT_RECORD_TYPE

    @property
    def key(self) -> bytes:
        return self.study_uid.encode("ascii")


def encode_commitment_request(request: CommitmentRequest) -> bytes:
    return orjson.dumps(dataclasses.asdict(request))


def _parse_object(raw: bytes | str | None) -> dict[str, Any]:
    if raw is None:
        raise InvalidEventError("empty message")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEventError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidEventError(f"expected a JSON object, got {type(data).__name__}")
    return data


def decode_raw_record(raw: bytes | str | None) -> InstanceEvent | CommitmentRequest:
    """Parse and validate one ``imaging.raw`` value of either kind; raise :class:`InvalidEventError` on any defect."""
    data = _parse_object(raw)
    record_type = data.get("record_type")
    if record_type is None:
        return _instance_event_from(data)
    if record_type != COMMITMENT_RECORD_TYPE:
        raise InvalidEventError(f"unknown record_type {str(record_type)[:40]!r}")
    uids = data.get("sop_instance_uids")
    if not isinstance(uids, list) or not uids or not all(isinstance(uid, str) and uid for uid in uids):
        raise InvalidEventError("storage_commitment without sop_instance_uids")
    for name in ("study_uid", "transaction_uid"):
        if not isinstance(data.get(name), str) or not data[name]:
            raise InvalidEventError(f"storage_commitment without {name}")
    return CommitmentRequest(
        study_uid=data["study_uid"],
        transaction_uid=data["transaction_uid"],
        sop_instance_uids=tuple(uids),
        calling_ae=str(data.get("calling_ae") or ""),
        received_at=str(data.get("received_at") or ""),
    )


def decode_instance_event(raw: bytes | str | None) -> InstanceEvent:
    """Parse and validate one instance event; raise :class:`InvalidEventError` on any defect."""
    return _instance_event_from(_parse_object(raw))


def _instance_event_from(data: dict[str, Any]) -> InstanceEvent:
    missing = [name for name in REQUIRED_FIELDS if not isinstance(data.get(name), str) or not data[name]]
    if missing:
        raise InvalidEventError(f"missing required field(s): {', '.join(missing)}")
    if data.keys() <= _FIELD_NAMES:  # the usual case: one set test instead of two passes over the fields
        known = data
    else:
        known = {k: v for k, v in data.items() if k in _FIELD_NAMES}
        unknown = {k: v for k, v in data.items() if k not in _FIELD_NAMES}
        known["extra"] = {**(known.get("extra") or {}), **unknown}
    codes = known.get("procedure_codes")
    known["procedure_codes"] = tuple(CodedValue(**c) for c in codes) if codes else ()
    try:
        return InstanceEvent(**known)
    except TypeError as exc:
        raise InvalidEventError(f"bad field: {exc}") from None
