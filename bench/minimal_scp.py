"""The issue's reference receiver: the least an asyncio C-STORE SCP can do, to bound what ours can reach.

    .venv/bin/python bench/minimal_scp.py PORT OUT_DIR [--no-fsync] [--sha256]

One event loop; association set-up through pynetdicom's ``negotiate_as_acceptor`` (by way of
:func:`scp.negotiation.negotiate`), command sets with the receiver's hand-written codec; each C-STORE's
fragments are written to a temporary file as they arrive, the file is fsynced (unless ``--no-fsync``)
and renamed, then the response is sent. No header parse, no outbox, no publish, no limits, no timeouts:
a bench peer only, never a receiver. It gives every shortcut to the benchmark's side, so a ratio it
cannot reach is one the receiver (which must also commit an outbox row durably) cannot reach either.

``--sha256`` adds the one piece of the receiver's own work that grows with the dataset: the SHA-256 of
its bytes as they arrive (the receiver needs it to recognise a duplicate, for the event, and to check a
file after a crash).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct
import sys
from pathlib import Path
from typing import Any

from pynetdicom.pdu import A_ASSOCIATE_RQ

from scp import dimse, pdu
from scp.negotiation import Accepted, CallingAllowlist, Offer, negotiate, supported_contexts


class MinimalAssociation:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, out: Path, fsync: bool, sha256: bool
    ) -> None:
        self.reader, self.writer, self.out, self.fsync, self.sha256 = reader, writer, out, fsync, sha256
        self.digest: Any = None  # hashlib's SHA-256 of the dataset being received, with --sha256
        self.command = bytearray()
        self.pending: dimse.Command | None = None
        self.file: int | None = None
        self.temp: Path | None = None
        self.names = 0

    async def next_pdu(self) -> tuple[int, bytes]:
        """(type, variable field) of the next PDU, read whole (no bound, no timeout: a bench peer)."""
        pdu_type, _, length = struct.unpack(">BBL", await self.reader.readexactly(6))
        return pdu_type, await self.reader.readexactly(length)

    async def run(self, offer: Offer) -> None:
        pdu_type, body = await self.next_pdu()
        request = A_ASSOCIATE_RQ()
        request.decode(pdu.pdu(pdu_type, body))
        accepted = negotiate(request, offer, "127.0.0.1", False)
        self.writer.write(accepted.pdu)
        if not isinstance(accepted, Accepted):
            return
        while True:
            pdu_type, body = await self.next_pdu()
            if pdu_type == pdu.A_RELEASE_RQ:
                self.writer.write(pdu.release_rp())
                await self.writer.drain()
                return
            if pdu_type != pdu.P_DATA_TF:
                return
            for header, start in pdu.pdv_items_in(body):
                await self.pdv(header, body[start : start + header.length])

    async def pdv(self, header: pdu.PdvHeader, fragment: bytes) -> None:
        context_id, is_last = header.context_id, header.is_last
        if header.is_command:
            self.command += fragment
            if not is_last:
                return
            command = dimse.decode_command(bytes(self.command))
            self.command = bytearray()
            if int(command.CommandField) == dimse.C_ECHO_RQ:
                await self.respond(context_id, dimse.response(dimse.C_ECHO_RSP, command, 0))
                return
            self.pending = command
            self.digest = hashlib.sha256() if self.sha256 else None
            self.names += 1
            self.temp = self.out / f".{id(self)}-{self.names}.part"
            self.file = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            return
        assert self.file is not None and self.pending is not None and self.temp is not None
        os.write(self.file, fragment)
        if self.digest is not None:
            self.digest.update(fragment)
        if not is_last:
            return
        if self.fsync:
            os.fsync(self.file)
        os.close(self.file)
        command, self.pending, self.file = self.pending, None, None
        os.replace(self.temp, self.out / f"{str(command.AffectedSOPInstanceUID).strip()}.dcm")
        await self.respond(context_id, dimse.response(dimse.C_STORE_RSP, command, 0))

    async def respond(self, context_id: int, command: bytes) -> None:
        self.writer.write(pdu.p_data(context_id, True, True, command))
        await self.writer.drain()


async def serve(port: int, out: Path, fsync: bool, sha256: bool) -> None:
    offer = Offer("STUDYSTREAM", CallingAllowlist.parse(""), 131072, supported_contexts(), require_called_ae=False)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await MinimalAssociation(reader, writer, out, fsync, sha256).run(offer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> int:
    port, out = int(argv[0]), Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    try:
        asyncio.run(serve(port, out, fsync="--no-fsync" not in argv, sha256="--sha256" in argv))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
