"""The DICOM upper layer's PDUs on an asyncio stream: framing, bounds and timeouts (PS3.8 9.3).

Reading never holds more than a bounded amount of one PDU in memory: association PDUs are at most
:data:`MAX_CONTROL_PDU` bytes; a P-DATA-TF PDU of up to :data:`WHOLE_PDU` bytes is read in one piece, a
longer one (however long its peer makes it) item by item and each fragment in chunks, handed to the
caller as it arrives. Every read has a deadline, so a peer that sends nothing, or one byte a second, is
dropped.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass

from domain.errors import StudyStreamError

A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, P_DATA_TF = 0x01, 0x02, 0x03, 0x04
A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x05, 0x06, 0x07
KNOWN_TYPES = frozenset(range(1, 8))
MAX_CONTROL_PDU = 256 * 1024  # an A-ASSOCIATE-RQ with 128 contexts is ~30 KB
CHUNK = 64 * 1024  # a fragment is read in pieces of this size, each within the network timeout
WHOLE_PDU = 256 * 1024  # a P-DATA-TF up to this long is read whole (one read, one timeout), then split

# A-ABORT sources and A-P-ABORT provider reasons (PS3.8 9.3.8)
SOURCE_SERVICE_USER, SOURCE_SERVICE_PROVIDER = 0x00, 0x02
REASON_NOT_SPECIFIED, UNRECOGNIZED_PDU, UNEXPECTED_PDU = 0x00, 0x01, 0x02
UNRECOGNIZED_PARAMETER, UNEXPECTED_PARAMETER, INVALID_PARAMETER = 0x04, 0x05, 0x06


class ProtocolError(StudyStreamError):
    """The peer broke the protocol: the association is aborted with this A-P-ABORT reason."""

    def __init__(self, message: str, reason: int = INVALID_PARAMETER) -> None:
        super().__init__(message)
        self.reason = reason


class PeerGone(StudyStreamError):
    """The connection closed, was reset, or went silent past its timeout."""


@dataclass(frozen=True, slots=True)
class PdvHeader:
    context_id: int
    is_command: bool
    is_last: bool
    length: int  # bytes of the fragment that follow


def pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, len(body)) + body


def abort(source: int = SOURCE_SERVICE_PROVIDER, reason: int = REASON_NOT_SPECIFIED) -> bytes:
    return pdu(A_ABORT, bytes((0, 0, source, reason)))


def release_rp() -> bytes:
    return pdu(A_RELEASE_RP, b"\x00" * 4)


def p_data(context_id: int, is_command: bool, is_last: bool, fragment: bytes) -> bytes:
    """One P-DATA-TF with one PDV item."""
    header = (1 if is_command else 0) | (2 if is_last else 0)
    item = struct.pack(">LBB", len(fragment) + 2, context_id, header) + fragment
    return pdu(P_DATA_TF, item)


def fragments(context_id: int, is_command: bool, data: bytes, peer_max_pdu: int) -> list[bytes]:
    """``data`` as P-DATA-TF PDUs no longer than the peer accepts (0: no limit)."""
    room = peer_max_pdu - 6 if peer_max_pdu else len(data) or 1  # PDV item header: 4 + 2 bytes
    room = max(room, 1)
    pieces = [data[i : i + room] for i in range(0, len(data), room)] or [b""]
    return [p_data(context_id, is_command, i == len(pieces) - 1, piece) for i, piece in enumerate(pieces)]


class PduReader:
    def __init__(self, reader: asyncio.StreamReader, timeout: float) -> None:
        self.reader = reader
        self.timeout = timeout

    async def _exactly(self, n: int, timeout: float | None = None) -> bytes:
        # asyncio.timeout, not wait_for: wait_for wraps every read in a new Task (Python 3.11), several per
        # C-STORE on the path to its response.
        try:
            async with asyncio.timeout(timeout or self.timeout):
                return await self.reader.readexactly(n)
        except asyncio.IncompleteReadError:
            raise PeerGone("connection closed") from None
        except (ConnectionError, OSError) as exc:
            raise PeerGone(f"connection lost ({type(exc).__name__})") from None
        except TimeoutError:
            raise PeerGone("timed out") from None

    async def header(self, timeout: float | None = None) -> tuple[int, int]:
        """(PDU type, length) of the next PDU; an unknown type is a protocol error."""
        pdu_type, _, length = struct.unpack(">BBL", await self._exactly(6, timeout))
        if pdu_type not in KNOWN_TYPES:
            raise ProtocolError(f"unknown PDU type 0x{pdu_type:02x}", UNRECOGNIZED_PDU)
        return pdu_type, length

    async def body(self, pdu_type: int, length: int) -> bytes:
        """The variable field of a PDU other than P-DATA-TF."""
        if length > MAX_CONTROL_PDU:
            raise ProtocolError(f"PDU 0x{pdu_type:02x} of {length} bytes", INVALID_PARAMETER)
        return await self._exactly(length)

    async def pdv_items(self, length: int) -> AsyncIterator[tuple[PdvHeader, AsyncIterator[bytes]]]:
        """The PDV items of a P-DATA-TF of ``length`` bytes, each with its fragment as chunks."""
        if length < 6:
            raise ProtocolError("P-DATA-TF without a PDV item")
        if length <= WHOLE_PDU:
            # One read for the whole PDU (the usual case): each read costs a timeout and a few awaits.
            body = await self._exactly(length)
            for header, start in pdv_items_in(body):
                yield header, _one(body[start : start + header.length])
            return
        remaining = length
        while remaining > 0:
            if remaining < 6:
                raise ProtocolError("PDV item header runs past the PDU")
            header = _pdv_header(await self._exactly(6), remaining - 4)
            remaining -= 6 + header.length
            chunks = self._chunks(header.length)
            yield header, chunks
            async for _ in chunks:  # what the caller did not read is skipped
                pass

    async def _chunks(self, length: int) -> AsyncIterator[bytes]:
        while length > 0:
            piece = await self._exactly(min(CHUNK, length))
            length -= len(piece)
            yield piece


def _pdv_header(raw: bytes, room: int) -> PdvHeader:
    """A PDV item's header; ``room``: the PDU's bytes left after the item's length field."""
    item_length, context_id, control = struct.unpack(">LBB", raw)
    if item_length < 2 or item_length > room:
        raise ProtocolError("PDV item length disagrees with the PDU length")
    if context_id % 2 == 0 or control & 0xFC:
        raise ProtocolError("PDV item with an invalid context ID or control header")
    return PdvHeader(context_id, bool(control & 1), bool(control & 2), item_length - 2)


def pdv_items_in(body: bytes) -> list[tuple[PdvHeader, int]]:
    """Every PDV item of a P-DATA-TF body held in memory, with where its fragment starts, checked up front
    (as the streamed path would find them, but before any fragment is handed on)."""
    items, offset = [], 0
    while offset < len(body):
        if len(body) - offset < 6:
            raise ProtocolError("PDV item header runs past the PDU")
        header = _pdv_header(body[offset : offset + 6], len(body) - offset - 4)
        items.append((header, offset + 6))
        offset += 6 + header.length
    return items


async def _one(piece: bytes) -> AsyncIterator[bytes]:
    if piece:
        yield piece
