"""DICOMweb STOW-RS (PS3.18 10.5), the pure half: what a part's File Meta says, the response and its status.

No I/O here. The receiver (:mod:`scp.stow`) streams each part of a ``multipart/related;
type="application/dicom"`` request to a staged file, reads its File Meta with :func:`part10_meta`, stores
it like a C-STORE and keeps a :class:`PartOutcome`; :func:`response_status` and :func:`response_dataset`
turn the outcomes into the Store Instances Response Module (PS3.18 Annex I), rendered as DICOM JSON
(PS3.18 F.2) or as the Native DICOM Model XML (PS3.19 A.1) by :func:`render`.

Failure reasons are the C-STORE statuses of :data:`domain.statuses.REFUSAL_STATUS`, which fall in the
ranges PS3.18 Table I.2-2 gives: A7xx out of resources, A9xx data set does not match (also an instance of
another study than the URL names: PS3.18 gives no code of its own), Cxxx cannot understand.
"""

from __future__ import annotations

import json
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from domain.events import StowBoundary
from domain.file_meta import walk_file_meta
from domain.uids import is_valid_uid

DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
NATIVE_DICOM_NS = "http://dicom.nema.org/PS3.19/models/NativeDICOM"
PART10_HEAD_BYTES = 64 * 1024  # File Meta Information larger than this is not accepted
_META_UIDS = {0x0002: "sop_class", 0x0003: "sop_instance", 0x0010: "transfer_syntax"}


@dataclass(frozen=True, slots=True)
class Part10Meta:
    """What a part's File Meta Information names: the instance, its class and its transfer syntax."""

    sop_class: str
    sop_instance: str
    transfer_syntax: str


def part10_meta(head: bytes) -> Part10Meta | None:
    """The File Meta of a PS3.10 file from its first bytes (preamble, ``DICM``, group 0002 explicit VR
    little endian), or None when they are not one: no ``DICM``, an element past ``head``, a UID missing."""
    walked = walk_file_meta(head)
    if walked is None:
        return None
    values = walked[0]
    found = {
        name: values[element].decode("ascii", "replace").strip("\0 ")
        for element, name in _META_UIDS.items()
        if element in values
    }
    if len(found) < len(_META_UIDS) or not all(is_valid_uid(value) for value in found.values()):
        return None
    return Part10Meta(**found)


@dataclass(frozen=True, slots=True)
class PartOutcome:
    """One part of a request: stored (``failure`` None) or not, with the reason name that is counted."""

    sop_class: str = ""
    sop_instance: str = ""
    study_uid: str = ""
    failure: int | None = None  # FailureReason (0008,1197)
    warning: int | None = None  # WarningReason (0008,1196), for a stored instance
    reason: str = "stored"

    @property
    def stored(self) -> bool:
        return self.failure is None


def response_status(outcomes: Sequence[PartOutcome]) -> int:
    """PS3.18 Table 10.5.3-1: 200 all stored, 202 some stored but failures or warnings, 409 none stored."""
    stored = [outcome for outcome in outcomes if outcome.stored]
    if not stored:
        return 409
    if len(stored) == len(outcomes) and all(outcome.warning is None for outcome in stored):
        return 200
    return 202


def _reference(outcome: PartOutcome) -> Dataset:
    item = Dataset()
    if outcome.sop_class:
        item.ReferencedSOPClassUID = outcome.sop_class
    if outcome.sop_instance:
        item.ReferencedSOPInstanceUID = outcome.sop_instance
    return item


def response_dataset(outcomes: Sequence[PartOutcome]) -> Dataset:
    """The Store Instances Response Module (PS3.18 Table I.1-1). Retrieve URL (type 2) is present and empty:
    the receiver serves no WADO-RS. A part whose UIDs were never read has only its Failure Reason."""
    ds = Dataset()
    ds.RetrieveURL = None
    failed, referenced = [], []
    for outcome in outcomes:
        item = _reference(outcome)
        if outcome.stored:
            item.RetrieveURL = None
            if outcome.warning is not None:
                item.WarningReason = outcome.warning
            referenced.append(item)
        else:
            item.FailureReason = outcome.failure
            failed.append(item)
    if failed:
        ds.FailedSOPSequence = failed
    if referenced:
        ds.ReferencedSOPSequence = referenced
    return ds


def choose_media_type(accept: str | None) -> str | None:
    """The response's media type for an Accept header: DICOM JSON unless XML is preferred; None: neither
    is acceptable (406). ``application/json`` counts as DICOM JSON, ``*/*`` and ``application/*`` as either."""
    if not accept or not accept.strip():
        return DICOM_JSON
    best: tuple[float, int, str] | None = None
    for position, item in enumerate(accept.split(",")[:64]):
        media, *params = (piece.strip() for piece in item.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        media = media.lower()
        chosen = {
            DICOM_JSON: DICOM_JSON,
            "application/json": DICOM_JSON,
            DICOM_XML: DICOM_XML,
            "*/*": DICOM_JSON,
            "application/*": DICOM_JSON,
        }.get(media)
        if chosen is None or not quality > 0:
            continue
        if best is None or (quality, -position) > (best[0], -best[1]):
            best = (quality, position, chosen)
    return best[2] if best else None


def render(ds: Dataset, media_type: str) -> bytes:
    """The response body in ``media_type`` (:data:`DICOM_JSON` or :data:`DICOM_XML`)."""
    if media_type == DICOM_XML:
        return native_dicom_xml(ds)
    return json.dumps(ds.to_json_dict(), separators=(",", ":")).encode()


def _attributes(parent: ET.Element, ds: Dataset) -> None:
    for element in ds:
        node = ET.SubElement(
            parent, "DicomAttribute", tag=f"{element.tag:08X}", vr=element.VR, keyword=element.keyword or ""
        )
        if element.VR == "SQ":
            for number, item in enumerate(element.value, start=1):
                _attributes(ET.SubElement(node, "Item", number=str(number)), item)
            continue
        if element.value is None or element.value == "":
            continue
        values = element.value if element.VM > 1 else [element.value]
        for number, value in enumerate(values, start=1):
            ET.SubElement(node, "Value", number=str(number)).text = str(value)


def native_dicom_xml(ds: Dataset) -> bytes:
    """``ds`` as a PS3.19 Native DICOM Model document (the attributes a STOW-RS response has: UI, US, UR, SQ)."""
    root = ET.Element("NativeDicomModel", xmlns=NATIVE_DICOM_NS)
    _attributes(root, ds)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def request_uid() -> str:
    """A fresh UID naming one STOW-RS request (the ``transaction_uid`` of its boundary records)."""
    return f"2.25.{uuid.uuid4().int}"


def boundary_records(
    transaction_uid: str, outcomes: Sequence[PartOutcome], calling_ae: str, received_at: str, max_uids: int
) -> list[StowBoundary]:
    """One :class:`StowBoundary` per study the request stored instances of, in parts of ``max_uids``."""
    studies: dict[str, dict[str, None]] = {}  # study → its instances, in order, once each
    for outcome in outcomes:
        if outcome.stored:
            studies.setdefault(outcome.study_uid, {})[outcome.sop_instance] = None
    records = []
    for study_uid, unique in studies.items():
        sops = list(unique)
        chunks = [tuple(sops[i : i + max_uids]) for i in range(0, len(sops), max_uids)]
        records += [
            StowBoundary(study_uid, transaction_uid, chunk, calling_ae, received_at, part=index, parts=len(chunks))
            for index, chunk in enumerate(chunks, start=1)
        ]
    return records
