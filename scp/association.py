"""One association, as the acceptor: the PS3.8 state machine on an asyncio stream, and the DIMSE services.

States, as PS3.8 9.2 names them: awaiting the A-ASSOCIATE-RQ (Sta2, the ARTIM timer running), then
accepted or rejected; established (Sta6) until A-RELEASE-RQ (answered, then the peer's close awaited:
Sta13), A-ABORT, a protocol violation (A-P-ABORT with its reason) or silence past the timeouts.

Services: C-ECHO; C-STORE (the dataset streamed into a staged file as each P-DATA fragment arrives,
see :mod:`scp.cstore`); N-ACTION of Storage Commitment, answered at once and followed by an
N-EVENT-REPORT on this association or on one to the sender's own listener (:mod:`scp.commitment`);
N-CREATE and N-SET of Modality Performed Procedure Step (:mod:`scp.mpps`).
Operations are performed one at a time (asynchronous operations window 1/1).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.dsutils import encode
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.presentation import PresentationContext

from domain.statuses import SUCCESS, UNRECOGNIZED_OPERATION, StoreRefused
from scp import dimse, pdu
from scp.commitment import ReportRoute, commitment_action, report_on_new_association
from scp.cstore import Arrival, StagedInstance, StoreLimits, account_stored, commit_durably, identify
from scp.metrics import ReceiverMetrics
from scp.mpps import mpps_response
from scp.negotiation import STORAGE_COMMITMENT, Accepted, Offer, Rejected, check_titles, negotiate
from scp.outbox import Outbox
from scp.storage import InstanceStore

log = logging.getLogger(f"studystream.{__name__}")


@dataclass
class ReceiverDeps:
    """What every association of one receiving process shares."""

    offer: Offer
    limits: StoreLimits
    store: InstanceStore
    outbox: Outbox
    metrics: ReceiverMetrics
    run_blocking: Callable[..., asyncio.Future[Any]]  # runs a function in the receiver's thread pool
    acse_timeout: float
    dimse_timeout: float
    network_timeout: float
    max_associations: int
    max_associations_per_ae: int
    max_action_bytes: int
    index: Any = None  # scp.commitment.InstanceIndex
    report_route: ReportRoute | None = None
    commitment_max_uids: int = 10_000
    mpps: Any = None  # scp.mpps.StepStore
    mpps_max_instances: int = 10_000
    fault_after_store: int = 0
    inline_store: bool = False  # a lone association's instances are stored on the loop (receiver_inline_store)
    active: dict[str, int] = field(default_factory=dict)  # calling AE → associations open
    background: set[asyncio.Task[None]] = field(default_factory=set)  # reports outliving their association
    stored: Iterator[int] = field(default_factory=lambda: itertools.count(1))  # thread-safe under the GIL

    @property
    def open_associations(self) -> int:
        return sum(self.active.values())


class _Memory:
    """A dataset other than a C-STORE's (N-ACTION information), held in memory up to a bound."""

    def __init__(self, limit: int) -> None:
        self.buffer = BytesIO()
        self.limit = limit
        self.too_large = False

    def write(self, chunk: bytes) -> None:
        if self.too_large:
            return
        if self.buffer.tell() + len(chunk) > self.limit:
            self.too_large = True
            self.buffer = BytesIO()
            return
        self.buffer.write(chunk)


@dataclass
class _Message:
    """The DIMSE message being received: its command, then (if it has one) its dataset."""

    context_id: int
    command: dimse.Command
    sink: StagedInstance | _Memory | None = None


class Association:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, deps: ReceiverDeps) -> None:
        self.writer = writer
        self.deps = deps
        self.reader = pdu.PduReader(reader, deps.network_timeout)
        peer = writer.get_extra_info("peername") or ("?", 0)
        self.host, self.port = str(peer[0]), int(peer[1])
        self.calling_ae = ""
        self.called_ae = deps.offer.ae_title
        self.contexts: dict[int, PresentationContext] = {}
        self.peer_max_pdu = 0
        self.send_lock = asyncio.Lock()
        self.command_buffer = bytearray()
        self.command_context = 0
        self.message: _Message | None = None
        self.replies: dict[int, asyncio.Future[dimse.Command]] = {}
        self.next_message_id = 1
        self.stored = 0
        self.bytes_received = 0
        self.refused = 0
        self.background: set[asyncio.Task[None]] = set()

    # --- life cycle ---

    async def run(self) -> None:
        started = time.monotonic()
        registered = False
        try:
            accepted = await self.associate()
            if accepted is None:
                return
            registered = True
            await self.serve()
        except pdu.ProtocolError as exc:
            self.deps.metrics.associations_aborted.labels(reason="protocol_error").inc()
            log.warning("association %s from %s aborted: %s", self.calling_ae or "?", self.host, exc)
            await self.send_now(pdu.abort(pdu.SOURCE_SERVICE_PROVIDER, exc.reason))
        except pdu.PeerGone as exc:
            if self.calling_ae:
                log.info("association %s from %s ended: %s", self.calling_ae, self.host, exc)
        finally:
            self.discard_partial()
            for task in self.background:
                task.cancel()
            if registered:
                self.deps.active[self.calling_ae] -= 1
                if not self.deps.active[self.calling_ae]:
                    del self.deps.active[self.calling_ae]
                took = time.monotonic() - started
                log.info(
                    "association %s from %s closed: %d stored, %d refused, %d bytes in %.1f s",
                    self.calling_ae, self.host, self.stored, self.refused, self.bytes_received, took,
                    extra={"calling_ae": self.calling_ae, "peer": self.host, "stored": self.stored,
                           "refused": self.refused, "bytes": self.bytes_received, "duration_ms": round(took * 1000)},
                )  # fmt: skip
            self.writer.close()
            try:
                await asyncio.wait_for(self.writer.wait_closed(), 5)
            except (TimeoutError, OSError, ConnectionError):
                pass

    async def associate(self) -> Accepted | None:
        """Sta2: the A-ASSOCIATE-RQ must come within the ARTIM timeout; accept or reject it."""
        pdu_type, length = await self.reader.header(timeout=self.deps.acse_timeout)
        if pdu_type != pdu.A_ASSOCIATE_RQ:
            raise pdu.ProtocolError(f"PDU 0x{pdu_type:02x} before A-ASSOCIATE-RQ", pdu.UNEXPECTED_PDU)
        body = await self.reader.body(pdu_type, length)
        deps = self.deps
        bad_titles = check_titles(body)
        if bad_titles is not None:
            return await self.rejected(bad_titles)
        request = A_ASSOCIATE_RQ()
        try:
            request.decode(pdu.pdu(pdu_type, body))
        except Exception as exc:  # noqa: BLE001 - pynetdicom raises many exception types on malformed PDUs
            raise pdu.ProtocolError(f"malformed A-ASSOCIATE-RQ ({type(exc).__name__})") from None
        calling = str(getattr(request, "calling_ae_title", "")).strip()
        limit_reached = deps.open_associations >= deps.max_associations or (
            deps.active.get(calling, 0) >= deps.max_associations_per_ae
        )
        try:
            outcome = negotiate(request, deps.offer, self.host, limit_reached)
        except Exception as exc:  # noqa: BLE001 - an item pynetdicom decoded but cannot negotiate
            raise pdu.ProtocolError(f"A-ASSOCIATE-RQ not negotiable ({type(exc).__name__})") from None
        if not isinstance(outcome, Accepted):
            return await self.rejected(outcome)
        await self.send_now(outcome.pdu)
        self.calling_ae, self.contexts, self.peer_max_pdu = outcome.calling_ae, outcome.contexts, outcome.peer_max_pdu
        deps.active[self.calling_ae] = deps.active.get(self.calling_ae, 0) + 1
        deps.metrics.associations_accepted.inc()
        log.info(
            "association %s from %s accepted: %d context(s), %d rejected%s",
            self.calling_ae,
            self.host,
            len(outcome.contexts),
            outcome.rejected_contexts,
            "".join(f", {note}" for note in outcome.notes),
        )
        return outcome

    async def rejected(self, outcome: Rejected) -> None:
        await self.send_now(outcome.pdu)
        self.deps.metrics.associations_rejected.labels(reason=outcome.reason).inc()
        log.warning(
            "association rejected: %s (calling AE %r from %s)", outcome.reason, outcome.calling_ae[:16], self.host
        )
        await self.await_close()

    async def serve(self) -> None:
        """Sta6 until the association ends."""
        while True:
            timeout = self.deps.dimse_timeout if self.message is not None else self.deps.network_timeout
            pdu_type, length = await self.reader.header(timeout=timeout)
            if pdu_type == pdu.P_DATA_TF:
                await self.p_data(length)
            elif pdu_type == pdu.A_RELEASE_RQ:
                await self.reader.body(pdu_type, length)
                await self.send_now(pdu.release_rp())
                await self.await_close()
                return
            elif pdu_type == pdu.A_ABORT:
                await self.reader.body(pdu_type, length)
                self.deps.metrics.associations_aborted.labels(reason="peer").inc()
                log.warning("association %s from %s aborted by the peer", self.calling_ae, self.host)
                return
            else:
                raise pdu.ProtocolError(f"unexpected PDU 0x{pdu_type:02x}", pdu.UNEXPECTED_PDU)

    async def await_close(self) -> None:
        """After our last PDU: wait (ARTIM) for the peer to close the connection; then close it anyway."""
        try:
            while await asyncio.wait_for(self.reader.reader.read(65536), self.deps.acse_timeout):
                pass
        except (TimeoutError, ConnectionError, OSError):
            pass

    def discard_partial(self) -> None:
        if self.message is not None and isinstance(self.message.sink, StagedInstance):
            self.message.sink.discard()  # an abort in the middle of a dataset: no file, no event
        self.message = None

    # --- P-DATA ---

    async def p_data(self, length: int) -> None:
        async for header, chunks in self.reader.pdv_items(length):
            if header.context_id not in self.contexts:
                raise pdu.ProtocolError(f"PDV on presentation context {header.context_id}, not accepted")
            if header.is_command:
                await self.command_fragment(header, chunks)
            else:
                await self.data_fragment(header, chunks)

    async def command_fragment(self, header: pdu.PdvHeader, chunks: Any) -> None:
        if self.message is not None:
            raise pdu.ProtocolError("a command fragment in the middle of a dataset", pdu.UNEXPECTED_PDU)
        if self.command_buffer and header.context_id != self.command_context:
            raise pdu.ProtocolError("command fragments on two presentation contexts")
        self.command_context = header.context_id
        async for chunk in chunks:
            self.command_buffer += chunk
            if len(self.command_buffer) > dimse.MAX_COMMAND_BYTES:
                raise pdu.ProtocolError("command set too large")
        if not header.is_last:
            return
        data, self.command_buffer = bytes(self.command_buffer), bytearray()
        try:
            command = dimse.decode_command(data)
        except dimse.CommandError as exc:
            raise pdu.ProtocolError(str(exc)) from None
        message = _Message(header.context_id, command)
        if dimse.has_dataset(command):
            message.sink = self.sink_for(message)
            self.message = message
        else:
            await self.dispatch(message)

    async def data_fragment(self, header: pdu.PdvHeader, chunks: Any) -> None:
        message = self.message
        if message is None or header.context_id != message.context_id:
            raise pdu.ProtocolError("a dataset fragment without its command", pdu.UNEXPECTED_PDU)
        sink = message.sink
        assert sink is not None
        async for chunk in chunks:
            self.bytes_received += len(chunk)
            sink.write(chunk)
        if header.is_last:
            self.message = None
            await self.dispatch(message)

    def sink_for(self, message: _Message) -> StagedInstance | _Memory:
        command = message.command
        if int(command.CommandField) == dimse.C_STORE_RQ:
            return StagedInstance(
                self.deps.store,
                str(command.get("AffectedSOPClassUID", "")).strip(),
                str(command.get("AffectedSOPInstanceUID", "")).strip(),
                str(self.contexts[message.context_id].transfer_syntax[0]),
                self.deps.limits,
            )
        return _Memory(self.deps.max_action_bytes)

    # --- services ---

    async def dispatch(self, message: _Message) -> None:
        field_ = int(message.command.CommandField)
        if field_ == dimse.C_ECHO_RQ:
            await self.send_command(message.context_id, dimse.response(dimse.C_ECHO_RSP, message.command, SUCCESS))
        elif field_ == dimse.C_STORE_RQ:
            await self.c_store(message)
        elif field_ == dimse.N_ACTION_RQ:
            await self.n_action(message)
        elif field_ in (dimse.N_CREATE_RQ, dimse.N_SET_RQ) and self.deps.mpps is not None:
            await self.mpps(message)
        elif field_ == dimse.N_EVENT_REPORT_RSP:
            reply = self.replies.pop(int(message.command.get("MessageIDBeingRespondedTo", -1)), None)
            if reply is not None and not reply.done():
                reply.set_result(message.command)
        elif field_ == dimse.C_CANCEL_RQ or field_ & 0x8000:
            pass  # nothing is cancellable here; unsolicited responses are ignored
        else:
            rsp = dimse.response(field_ | 0x8000, message.command, UNRECOGNIZED_OPERATION)
            await self.send_command(message.context_id, rsp)

    async def c_store(self, message: _Message) -> None:
        command, staged = message.command, message.sink
        assert isinstance(staged, StagedInstance)
        started = time.perf_counter()
        arrival = Arrival(
            sop_class=staged.sop_class,  # the command's, read once as the command arrived
            sop_instance=staged.sop_instance,
            transfer_syntax=staged.transfer_syntax,
            calling_ae=self.calling_ae,
            called_ae=self.called_ae,
            peer_address=f"{self.host}:{self.port}",
        )
        if self.deps.inline_store and self.deps.open_associations <= 1:
            status = store_instance(self.deps, staged, arrival)  # nobody else is waiting for the loop
        else:
            status = await self.deps.run_blocking(store_instance, self.deps, staged, arrival)
        if status == SUCCESS:
            self.stored += 1
            self.deps.metrics.store_seconds.observe(time.perf_counter() - started)
        else:
            self.refused += 1
        rsp = dimse.response(
            dimse.C_STORE_RSP, command, status, sop_class=staged.sop_class, sop_instance=staged.sop_instance
        )
        await self.send_command(message.context_id, rsp)

    async def n_action(self, message: _Message) -> None:
        command, sink = message.command, message.sink
        info = None
        if isinstance(sink, _Memory) and not sink.too_large:
            info = self.decode_dataset(message.context_id, sink.buffer.getvalue())
        status, report = await self.deps.run_blocking(commitment_action, self.deps, command, info, self.calling_ae)
        await self.send_command(message.context_id, dimse.response(dimse.N_ACTION_RSP, command, status))
        if report is not None:
            # A report to the sender's own listener outlives this association (the sender may release at once).
            owner = self.deps.background if self.reports_elsewhere() else self.background
            task = asyncio.create_task(self.deliver_report(message.context_id, report))
            owner.add(task)
            task.add_done_callback(owner.discard)

    async def mpps(self, message: _Message) -> None:
        """N-CREATE / N-SET of a Modality Performed Procedure Step (:mod:`scp.mpps`)."""
        sink = message.sink
        info = Dataset() if sink is None else None  # no dataset at all: every attribute is missing
        if isinstance(sink, _Memory) and not sink.too_large:
            info = self.decode_dataset(message.context_id, sink.buffer.getvalue())
        rsp = await self.deps.run_blocking(mpps_response, self.deps, message.command, info, self.calling_ae)
        await self.send_command(message.context_id, rsp)

    def reports_elsewhere(self) -> bool:
        route = self.deps.report_route
        return route is not None and self.calling_ae in route.peers

    def decode_dataset(self, context_id: int, data: bytes) -> Dataset | None:
        syntax = self.contexts[context_id].transfer_syntax[0]
        from pynetdicom.dsutils import decode

        try:
            return decode(BytesIO(data), syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
        except Exception:  # noqa: BLE001 - pydicom raises many exception types on malformed input
            return None

    async def deliver_report(self, context_id: int, report: Any) -> None:
        """The Storage Commitment result: on the sender's own listener if configured, else on this association."""
        route = self.deps.report_route
        where = "requesting association"
        if route is not None and self.reports_elsewhere():
            host, port = route.peers[self.calling_ae]
            where = f"new association to {self.calling_ae}@{host}:{port}"
            delivered = await self.deps.run_blocking(report_on_new_association, route, self.calling_ae, report)
        else:
            delivered = await self.report_here(context_id, report)
        if delivered:
            log.info("storage commitment %s: result delivered on the %s", report.transaction_uid, where)
        else:
            log.warning(
                "storage commitment %s: result not delivered on the %s (for senders that release at once, name "
                "their listener in STUDYSTREAM_RECEIVER_COMMITMENT_PEERS): the sender must ask again",
                report.transaction_uid,
                where,
            )

    async def report_here(self, context_id: int, report: Any) -> bool:
        message_id = self.next_message_id
        self.next_message_id += 1
        reply: asyncio.Future[dimse.Command] = asyncio.get_running_loop().create_future()
        self.replies[message_id] = reply
        syntax = self.contexts[context_id].transfer_syntax[0]
        data = encode(report.info, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated) or b""
        command = dimse.event_report_request(message_id, STORAGE_COMMITMENT, report.instance_uid, report.event_type)
        try:
            async with self.send_lock:
                for piece in pdu.fragments(context_id, True, command, self.peer_max_pdu):
                    await self._write(piece)
                for piece in pdu.fragments(context_id, False, data, self.peer_max_pdu):
                    await self._write(piece)
            answer = await asyncio.wait_for(reply, self.deps.report_route.timeout if self.deps.report_route else 15)
        except (TimeoutError, pdu.PeerGone, ConnectionError, OSError):
            return False
        finally:
            self.replies.pop(message_id, None)
        return int(answer.get("Status", 0xFFFF)) == SUCCESS

    # --- sending ---

    async def send_command(self, context_id: int, command: bytes) -> None:
        async with self.send_lock:
            for piece in pdu.fragments(context_id, True, command, self.peer_max_pdu):
                await self._write(piece)

    async def send_now(self, data: bytes) -> None:
        try:
            await self._write(data)
        except pdu.PeerGone:
            pass

    async def _write(self, data: bytes) -> None:
        try:
            self.writer.write(data)
            transport = self.writer.transport
            if not transport.get_write_buffer_size() and not transport.is_closing():
                return  # all of it taken by the kernel: nothing to wait for (a timeout less per response)
            async with asyncio.timeout(self.deps.network_timeout):  # no Task per write, unlike wait_for
                await self.writer.drain()
        except (TimeoutError, ConnectionError, OSError, RuntimeError) as exc:
            raise pdu.PeerGone(f"cannot send ({type(exc).__name__})") from None


def store_instance(deps: ReceiverDeps, staged: StagedInstance, arrival: Arrival) -> int:
    """Steps 1-3 of :mod:`scp.cstore` for one complete C-STORE (in the thread pool, or on the loop for a lone
    association: ``receiver_inline_store``); the status."""
    path: Path | None = None
    try:
        path = staged.finish()
        event, target = identify(staged, path, arrival, deps.store, deps.limits)
        stored, row_id = commit_durably(path, event, target, deps.store, deps.outbox)
    except StoreRefused as refusal:
        deps.metrics.failures.labels(reason=refusal.reason).inc()
        log.warning(
            "C-STORE %s refused: status 0x%04X %s (%s)",
            arrival.sop_instance[:64],
            refusal.status,
            refusal.reason,
            refusal.detail,
        )
        return refusal.status
    except Exception as exc:
        deps.metrics.failures.labels(reason="storage_error").inc()
        log.exception("C-STORE %s failed: %s", arrival.sop_instance[:64], type(exc).__name__)
        return StoreRefused("storage_error").status
    finally:
        if path is not None:
            path.unlink(missing_ok=True)  # renamed away on success; otherwise the partial file must not linger
    account_stored(deps.index, deps.metrics, event, target, stored, "C-STORE")
    count = next(deps.stored)
    if deps.fault_after_store and count >= deps.fault_after_store:
        log.error("fault injection: exiting after %d stored instances, before publishing", count)
        logging.shutdown()
        os._exit(70)
    deps.outbox.release(row_id)
    return SUCCESS
