"""Sender test kit: a dcmtk storescp peer, a pynetdicom peer with chosen contexts, and study writers."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import StorageCommitmentPushModel, StorageCommitmentPushModelInstance

from tests.conftest import free_port, wait_for

STORESCP = "/usr/bin/storescp"


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def dataset_bytes(path: Path) -> bytes:
    """The bytes after the File Meta Information: what travels in a C-STORE."""
    _meta, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def received_by_sop_uid(directory: Path) -> dict[str, Path]:
    """storescp's output files keyed by their MediaStorageSOPInstanceUID."""
    files = [path for path in directory.iterdir() if path.is_file()]
    return {str(split_dataset(path)[0].MediaStorageSOPInstanceUID): path for path in files}


@dataclass
class StoreSCP:
    port: int
    out_dir: Path
    ae_title: str = "STORESCP"


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StoreSCP]:
    """dcmtk storescp writing received data sets bit-preserving (+B), forking per association."""
    out_dir = tmp_path / "received"
    out_dir.mkdir()
    port = free_port()
    options = ["+B", "+xa", "--fork", "--max-pdu", "131072", "-aet", "STORESCP"]
    command = [STORESCP, "-od", str(out_dir), *options, str(port)]
    proc = subprocess.Popen(
        command, env={**os.environ, "TCP_NODELAY": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_for(lambda: listening(port) or proc.poll() is not None, 10, 0.05, "storescp to listen")
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "storescp exited"
        yield StoreSCP(port, out_dir)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class PyPeer:
    """A pynetdicom SCP that records what it receives; its behaviour is set per test."""

    port: int
    ae_title: str = "PYPEER"
    stored: list[str] = field(default_factory=list)
    commitment_requests: list[Dataset] = field(default_factory=list)
    open_associations: int = 0
    max_open_associations: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


StoreStatus = Callable[[str], int]


@pytest.fixture
def pynetdicom_peer() -> Iterator[Callable[..., PyPeer]]:
    """Factory: ``start(contexts, status_for=..., commitment=False, hold=None)`` -> a running PyPeer."""
    servers = []

    def start(
        sop_classes: list[str],
        transfer_syntaxes: list[str],
        status_for: StoreStatus | None = None,
        commitment: bool = False,
        commitment_report: bool = False,
        on_store: Callable[[PyPeer], None] | None = None,
        require_called_aet: bool = False,
    ) -> PyPeer:
        peer = PyPeer(free_port())
        ae = AE(ae_title=peer.ae_title)
        ae.require_called_aet = require_called_aet
        for sop_class in sop_classes:
            ae.add_supported_context(sop_class, transfer_syntaxes)
        if commitment:
            ae.add_supported_context(StorageCommitmentPushModel)

        def handle_store(event: evt.Event) -> int:
            uid = str(event.request.AffectedSOPInstanceUID)
            if on_store:
                on_store(peer)
            code = status_for(uid) if status_for else 0x0000
            if code == 0x0000:
                with peer.lock:
                    peer.stored.append(uid)
            return code

        action_answered = threading.Event()

        def handle_action(event: evt.Event) -> tuple[int, None]:
            request = event.action_information
            peer.commitment_requests.append(request)
            if commitment_report:
                # The report may only follow the N-ACTION response, so it is sent from another thread.
                assoc = event.assoc
                threading.Thread(target=report_commitment, args=(assoc, request), daemon=True).start()
            return 0x0000, None

        def report_commitment(assoc: Association, request: Dataset) -> None:
            if not action_answered.wait(timeout=10):
                return
            info = Dataset()
            info.TransactionUID = request.TransactionUID
            info.ReferencedSOPSequence = request.ReferencedSOPSequence
            assoc.send_n_event_report(info, 1, StorageCommitmentPushModel, StorageCommitmentPushModelInstance)

        def sent(event: evt.Event) -> None:
            if type(event.message).__name__ == "N_ACTION_RSP":
                action_answered.set()

        def opened(event: evt.Event) -> None:
            with peer.lock:
                peer.open_associations += 1
                peer.max_open_associations = max(peer.max_open_associations, peer.open_associations)

        def closed(event: evt.Event) -> None:
            with peer.lock:
                peer.open_associations -= 1

        handlers = [
            (evt.EVT_C_STORE, handle_store),
            (evt.EVT_N_ACTION, handle_action),
            (evt.EVT_ESTABLISHED, opened),
            (evt.EVT_DIMSE_SENT, sent),
            (evt.EVT_RELEASED, closed),
            (evt.EVT_ABORTED, closed),
        ]
        servers.append(ae.start_server(("127.0.0.1", peer.port), block=False, evt_handlers=handlers))
        return peer

    yield start
    for server in servers:
        server.shutdown()
