"""DIMSE command sets (PS3.7 chapter 9 and 10): decoded and encoded with pydicom, implicit VR little endian.

Pure: the association (:mod:`scp.association`) reassembles the command fragments and hands the bytes here.
"""

from __future__ import annotations

import struct
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
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


class CommandError(StudyStreamError):
    """A command set that does not decode, or lacks what its command needs."""


def decode_command(data: bytes) -> Dataset:
    try:
        command = read_dataset(BytesIO(data), is_implicit_VR=True, is_little_endian=True)
        field = command.get("CommandField")
        if field is None:
            raise CommandError("command set without a Command Field")
        int(field)
        return command
    except CommandError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom raises many exception types on malformed input
        raise CommandError(f"command set does not decode ({type(exc).__name__})") from None


def encode_command(command: Dataset) -> bytes:
    """The command set with its Command Group Length first."""
    if _GROUP_LENGTH in command:
        del command[_GROUP_LENGTH]
    encoded = encode(command, True, True) or b""
    length = Dataset()
    length.CommandGroupLength = len(encoded)
    return (encode(length, True, True) or b"") + encoded


def has_dataset(command: Dataset) -> bool:
    return int(command.get("CommandDataSetType", NO_DATASET)) != NO_DATASET


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
    request: Dataset,
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
