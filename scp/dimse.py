"""DIMSE command sets (PS3.7 chapter 9 and 10), implicit VR little endian.

Pure: the association (:mod:`scp.association`) reassembles the command fragments and hands the bytes here.
Requests are decoded by hand into a :class:`Command` (names and VRs from pydicom's dictionary): a
pydicom Dataset and its element access cost ~0.28 ms per C-STORE on the event loop, about a twentieth
of the whole C-STORE. Rarely sent requests are still encoded with pydicom.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

from pydicom.datadict import DicomDictionary
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pynetdicom.dsutils import encode

from domain.errors import StudyStreamError

C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
N_EVENT_REPORT_RQ, N_EVENT_REPORT_RSP = 0x0100, 0x8100
N_ACTION_RQ, N_ACTION_RSP = 0x0130, 0x8130
N_SET_RQ, N_SET_RSP = 0x0120, 0x8120
N_CREATE_RQ, N_CREATE_RSP = 0x0140, 0x8140
C_CANCEL_RQ = 0x0FFF
NO_DATASET = 0x0101
WITH_DATASET = 0x0001
MAX_COMMAND_BYTES = 64 * 1024

_GROUP_LENGTH = Tag(0x0000, 0x0000)
_ELEMENT_HEADER = struct.Struct("<HHI")
# Command elements (group 0000) by element number: (keyword, VR), from pydicom's dictionary.
_COMMAND_ELEMENTS: dict[int, tuple[str, str]] = {
    tag & 0xFFFF: (entry[4], entry[0]) for tag, entry in DicomDictionary.items() if tag >> 16 == 0 and entry[4]
}
_TEXT_VRS = frozenset({"UI", "AE", "CS", "LO", "SH", "ST", "LT"})


class CommandError(StudyStreamError):
    """A command set that does not decode, or lacks what its command needs."""


class Command:
    """A decoded command set: its elements by keyword, as ``int`` (US, UL), ``str`` (UIDs and text, padding
    stripped) or ``bytes`` (any other VR). Read like a pydicom Dataset: ``get``, ``in``, attributes."""

    __slots__ = ("values",)

    def __init__(self, values: dict[str, int | str | bytes]) -> None:
        self.values = values

    def get(self, keyword: str, default: Any = None) -> Any:
        return self.values.get(keyword, default)

    def __contains__(self, keyword: object) -> bool:
        return keyword in self.values

    def __getattr__(self, keyword: str) -> Any:
        if keyword.startswith("__"):  # copy and pickle probe for these, possibly before values is set
            raise AttributeError(keyword)
        try:
            return self.values[keyword]
        except KeyError:
            raise AttributeError(keyword) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __repr__(self) -> str:
        return f"Command({self.values!r})"


def _value(vr: str, raw: bytes) -> int | str | bytes:
    if vr == "US":
        if len(raw) != 2:
            raise CommandError(f"a US element of {len(raw)} bytes")
        return int.from_bytes(raw, "little")
    if vr == "UL":
        if len(raw) != 4:
            raise CommandError(f"a UL element of {len(raw)} bytes")
        return int.from_bytes(raw, "little")
    if vr in _TEXT_VRS:
        return raw.decode("ascii", "replace").strip("\0 ")
    return raw


def decode_command(data: bytes) -> Command:
    """The command set in ``data``; :class:`CommandError` if it does not decode or has no Command Field.

    Elements of other groups (none belong in a command set) and unknown command elements are skipped."""
    values: dict[str, int | str | bytes] = {}
    offset, end = 0, len(data)
    while offset < end:
        if end - offset < 8:
            raise CommandError("command set does not decode (an element header runs past its end)")
        group, element, length = _ELEMENT_HEADER.unpack_from(data, offset)
        offset += 8
        if length > end - offset:  # an undefined length (0xFFFFFFFF) included
            raise CommandError("command set does not decode (an element runs past its end)")
        raw = data[offset : offset + length]
        offset += length
        known = _COMMAND_ELEMENTS.get(element) if group == 0 else None
        if known is not None:
            values[known[0]] = _value(known[1], raw)
    if not isinstance(values.get("CommandField"), int):
        raise CommandError("command set without a Command Field")
    return Command(values)


def encode_command(command: Dataset) -> bytes:
    """The command set with its Command Group Length first."""
    if _GROUP_LENGTH in command:
        del command[_GROUP_LENGTH]
    encoded = encode(command, True, True) or b""
    length = Dataset()
    length.CommandGroupLength = len(encoded)
    return (encode(length, True, True) or b"") + encoded


def has_dataset(command: Command) -> bool:
    return command.get("CommandDataSetType", NO_DATASET) != NO_DATASET


def _implicit(element: int, value: bytes) -> bytes:
    """One command element (group 0000), implicit VR little endian."""
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def _text(value: str) -> bytes:
    raw = value.encode("ascii", "replace")
    return raw + b" " if len(raw) % 2 else raw


def _us(value: int) -> bytes:
    return struct.pack("<H", value)


def response(
    field: int,
    request: Command | Dataset,
    status: int,
    *,
    sop_class: str | None = None,
    sop_instance: str | None = None,
    with_dataset: bool = False,
    error_comment: str = "",
    error_id: int | None = None,
) -> bytes:
    """The response to ``request`` (its Message ID) with ``status`` (and, for a failure, an Error Comment and ID).

    Encoded by hand (seven fixed elements in tag order): pydicom's writer cost more per C-STORE than
    the rest of the response path together.
    """
    cls = (
        sop_class
        if sop_class is not None
        else request.get("AffectedSOPClassUID") or request.get("RequestedSOPClassUID")
    )
    instance = (
        sop_instance
        if sop_instance is not None
        else request.get("AffectedSOPInstanceUID") or request.get("RequestedSOPInstanceUID")
    )
    parts = [_implicit(0x0002, _uid(str(cls)))] if cls else []
    parts += [
        _implicit(0x0100, _us(field)),
        _implicit(0x0120, _us(int(request.get("MessageID", 0)))),
        _implicit(0x0800, _us(WITH_DATASET if with_dataset else NO_DATASET)),
        _implicit(0x0900, _us(status)),
    ]
    if error_comment:
        parts.append(_implicit(0x0902, _text(error_comment[:64])))
    if error_id is not None:
        parts.append(_implicit(0x0903, _us(error_id)))
    if instance:
        parts.append(_implicit(0x1000, _uid(str(instance))))
    if field == N_ACTION_RSP and "ActionTypeID" in request and status == 0:
        parts.append(_implicit(0x1008, _us(int(request.ActionTypeID))))
    body = b"".join(parts)
    return _implicit(0x0000, struct.pack("<I", len(body))) + body


def event_report_request(message_id: int, sop_class: str, sop_instance: str, event_type: int) -> bytes:
    rq = Dataset()
    rq.set_original_encoding(True, True)
    rq.AffectedSOPClassUID = sop_class
    rq.CommandField = N_EVENT_REPORT_RQ
    rq.MessageID = message_id
    rq.CommandDataSetType = WITH_DATASET
    rq.AffectedSOPInstanceUID = sop_instance
    rq.EventTypeID = event_type
    return encode_command(rq)
