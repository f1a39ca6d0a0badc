"""The receive engine against real peers and hostile ones: dcmtk with every transfer syntax and PDU size,
pynetdicom with role selection, `studystream send -j 4`, aborts and resets mid-dataset, silent and trickling
peers, and a small fuzzer of malformed PDUs. The receiver ends each in an abort, a reject or a close,
never a crash or a hang, and keeps serving."""

from __future__ import annotations

import json
import random
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, build_role
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from app.settings import Settings
from scp import dimse, pdu
from tests.conftest import ROOT, unique_uid, wait_for
from tests.scp.conftest import (
    DCMTK_ENV,
    STORESCU,
    dataset_bytes,
    echoscu,
    make_dataset,
    partial_files,
    read_events,
    write_dataset,
)

OPTIONS = {
    "-xs": JPEGLosslessSV1,
    "-xy": JPEGBaseline8Bit,
    "-xx": JPEGExtended12Bit,
    "-xv": JPEG2000Lossless,
    "-xw": JPEG2000,
    "-xt": JPEGLSLossless,
    "-xu": JPEGLSNearLossless,
    "-xr": RLELossless,
    "-xd": DeflatedExplicitVRLittleEndian,
    "-xb": ExplicitVRBigEndian,
    "-xi": ImplicitVRLittleEndian,
}
COMPRESSED = {JPEGLosslessSV1, JPEGBaseline8Bit, JPEGExtended12Bit, JPEG2000Lossless, JPEG2000, JPEGLSLossless}
COMPRESSED |= {JPEGLSNearLossless, RLELossless}


def instance_in(syntax: str, directory: Path, study: str) -> Path:
    ds = make_dataset(study, transfer_syntax=syntax)
    if syntax in COMPRESSED:  # one made-up fragment: a receiver that stores as received needs no codec
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xe0" + bytes(60) + b"\xff\xd9"])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    path = directory / f"{ds.SOPInstanceUID}.dcm"
    directory.mkdir(parents=True, exist_ok=True)
    syntax_uid = ds.file_meta.TransferSyntaxUID
    ds.save_as(path, implicit_vr=syntax_uid.is_implicit_VR, little_endian=syntax_uid.is_little_endian,
               enforce_file_format=True)  # fmt: skip
    return path


def storescu(port: int, *options: str, files: tuple[Path, ...]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STORESCU, "-aet", "CONFORM", "-aec", "STUDYSTREAM", "-to", "20", *options, "127.0.0.1", str(port)]
        + [str(f) for f in files],
        env=DCMTK_ENV,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_storescu_with_every_transfer_syntax_option_and_pdu_size_stores_each_file_as_sent(
    receiver_factory, kafka: Settings, tmp_path: Path
) -> None:
    receiver = receiver_factory(STUDYSTREAM_RECEIVER_MAX_PDU="0").start()  # no limit of ours
    study = unique_uid()
    sent = 0
    for option, syntax in OPTIONS.items():
        path = instance_in(syntax, tmp_path / option, study)
        result = storescu(receiver.port, option, files=(path,))
        assert result.returncode == 0, (option, result.stdout + result.stderr)
        sent += 1
    for limit in ("4096", "16384", "131072"):
        big = make_dataset(study, pixels=256)  # 128 KB of pixels: many PDUs at every size
        result = storescu(receiver.port, "--max-send-pdu", limit, files=(write_dataset(big, tmp_path / limit),))
        assert result.returncode == 0, result.stdout + result.stderr
        sent += 1
    events = read_events(kafka, receiver.topic, expected=sent)
    syntaxes = {value["transfer_syntax_uid"] for _, value in events}
    assert set(map(str, OPTIONS.values())) <= syntaxes
    for stored in receiver.stored_files():
        assert stored.stat().st_size > 0
    assert len(receiver.stored_files()) == sent


def test_pynetdicom_scu_with_role_selection_stores_and_echoes(receiver_factory, tmp_path: Path) -> None:
    receiver = receiver_factory().start()
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    ae.add_requested_context(Verification)
    role = build_role(CTImageStorage, scu_role=True, scp_role=True)
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="STUDYSTREAM", ext_neg=[role])
    assert assoc.is_established
    try:
        assert int(assoc.send_c_echo().Status) == 0
        path = write_dataset(make_dataset(), tmp_path / "in")
        assert int(assoc.send_c_store(path).Status) == 0
    finally:
        assoc.release()
    assert len(receiver.stored_files()) == 1


def test_studystream_send_four_studies_in_parallel(receiver_factory, kafka: Settings, tmp_path: Path) -> None:
    receiver = receiver_factory().start()
    for _ in range(4):
        study = unique_uid()
        for n in range(1, 6):
            write_dataset(make_dataset(study, instance_number=n), tmp_path / "in")
    studystream = str(Path(sys.executable).with_name("studystream"))
    done = subprocess.run(
        [studystream, "send", "-j", "4", "--json", "--no-progress", "--port", str(receiver.port), str(tmp_path / "in")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["stored"] == 20
    assert len(read_events(kafka, receiver.topic, expected=20)) == 20


# --- Hostile peers, over a raw socket ------------------------------------------------------------


def associate_rq(
    calling: str = "RAWPEER", called: str = "STUDYSTREAM", contexts: int = 1, abstract: str | None = None
) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title, primitive.called_ae_title = calling, called
    items = []
    for i in range(contexts):
        cx = build_context(abstract or (CTImageStorage if i else Verification), ["1.2.840.10008.1.2.1"])
        cx.context_id = 2 * i + 1 if 2 * i + 1 < 256 else 255
        items.append(cx)
    primitive.presentation_context_definition_list = items
    length = MaximumLengthNotification()
    length.maximum_length_received = 16384
    primitive.user_information = [length]
    request = A_ASSOCIATE_RQ()
    request.from_primitive(primitive)
    return request.encode()


class RawPeer:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_pdu_type(self) -> int | None:
        """The type of the next PDU the receiver sends, or None when it closed the connection."""
        try:
            header = self.sock.recv(6, socket.MSG_WAITALL)
        except (ConnectionError, TimeoutError):
            return None
        if len(header) < 6:
            return None
        pdu_type, _, length = struct.unpack(">BBL", header)
        self.sock.recv(length, socket.MSG_WAITALL)
        return pdu_type

    def closed_within(self, seconds: float) -> bool:
        self.sock.settimeout(seconds)
        try:
            while self.sock.recv(65536):
                pass
            return True
        except TimeoutError:
            return False
        except ConnectionError:
            return True

    def close(self, reset: bool = False) -> None:
        if reset:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def store_command(message_id: int, sop_instance: str) -> bytes:
    from pydicom.dataset import Dataset

    command = Dataset()
    command.AffectedSOPClassUID = CTImageStorage
    command.CommandField = dimse.C_STORE_RQ
    command.MessageID = message_id
    command.Priority = 0
    command.CommandDataSetType = 1
    command.AffectedSOPInstanceUID = sop_instance
    return dimse.encode_command(command)


@pytest.mark.parametrize("reset", [False, True], ids=["a-abort", "tcp-reset"])
def test_a_peer_gone_in_the_middle_of_a_dataset_leaves_no_file_and_no_event(
    receiver_factory, tmp_path: Path, reset: bool
) -> None:
    receiver = receiver_factory().start()
    peer = RawPeer(receiver.port)
    peer.send(associate_rq(contexts=2))
    assert peer.read_pdu_type() == pdu.A_ASSOCIATE_AC
    ds = make_dataset(pixels=512)
    encoded = write_dataset(ds, tmp_path / "in").read_bytes()
    peer.send(pdu.p_data(3, True, True, store_command(1, str(ds.SOPInstanceUID))))
    peer.send(pdu.p_data(3, False, False, encoded[200 : 200 + 100_000]))  # half the dataset, then gone
    time.sleep(0.2)  # let the receiver stage what it got: the point is what happens to a partial file
    if reset:
        peer.close(reset=True)
    else:
        peer.send(pdu.abort(pdu.SOURCE_SERVICE_USER))
        assert peer.closed_within(10)
    incoming = receiver.storage / ".incoming" / "0"
    wait_for(lambda: not partial_files(incoming), 10, what="the partial file removed")
    assert receiver.stored_files() == []
    assert echoscu(receiver.port).returncode == 0  # and the receiver serves on


def test_a_p_data_pdu_past_whole_pdu_is_streamed_stored_as_sent_and_checked_item_by_item(
    receiver_factory, tmp_path: Path
) -> None:
    """Past pdu.WHOLE_PDU a P-DATA-TF is read item by item and in chunks, never whole: the same bytes stored,
    and a PDV item whose length runs past such a PDU still ends the association."""
    receiver = receiver_factory(STUDYSTREAM_RECEIVER_MAX_PDU="0").start()  # no limit of ours
    ds = make_dataset(pixels=512)  # 512 KB of pixels: one PDV item in one PDU twice WHOLE_PDU long
    sent = dataset_bytes(write_dataset(ds, tmp_path / "in"))
    assert len(sent) > 2 * pdu.WHOLE_PDU
    peer = RawPeer(receiver.port)
    peer.send(associate_rq(contexts=2))
    assert peer.read_pdu_type() == pdu.A_ASSOCIATE_AC
    peer.send(pdu.p_data(3, True, True, store_command(1, str(ds.SOPInstanceUID))))
    peer.send(pdu.p_data(3, False, True, sent))
    assert peer.read_pdu_type() == pdu.P_DATA_TF  # the C-STORE response
    (stored,) = wait_for(receiver.stored_files, 10, what="the instance stored")
    assert dataset_bytes(stored) == sent
    peer.close()

    peer = RawPeer(receiver.port)
    peer.send(associate_rq(contexts=2))
    assert peer.read_pdu_type() == pdu.A_ASSOCIATE_AC
    peer.send(pdu.p_data(3, True, True, store_command(1, unique_uid())))
    first = pdu.p_data(3, False, False, sent[: pdu.WHOLE_PDU])[6:]  # a valid item, then one claiming too much
    peer.send(pdu.pdu(pdu.P_DATA_TF, first + struct.pack(">LBB", 5000, 3, 0) + b"\x00" * 10))
    assert peer.read_pdu_type() in (None, pdu.A_ABORT)
    peer.close()
    incoming = receiver.storage / ".incoming" / "0"
    wait_for(lambda: not partial_files(incoming), 10, what="the partial file removed")
    assert len(receiver.stored_files()) == 1


def test_a_silent_peer_and_a_trickling_peer_are_dropped_by_the_timeouts(receiver_factory) -> None:
    receiver = receiver_factory(STUDYSTREAM_RECEIVER_ACSE_TIMEOUT="1", STUDYSTREAM_RECEIVER_NETWORK_TIMEOUT="2").start()
    silent = RawPeer(receiver.port)
    assert silent.closed_within(5), "a peer that sends nothing must be dropped after the ARTIM timeout"
    trickling = RawPeer(receiver.port)
    trickling.send(associate_rq())
    assert trickling.read_pdu_type() == pdu.A_ASSOCIATE_AC
    started = time.monotonic()
    trickling.sock.settimeout(1.0)
    header = struct.pack(">BBL", pdu.P_DATA_TF, 0, 100_000)
    closed = False
    for byte in header + bytes(200):
        try:
            trickling.sock.send(bytes([byte]))
        except OSError:
            closed = True
            break
        try:
            if trickling.sock.recv(1) == b"":
                closed = True
                break
        except TimeoutError:
            pass
        except ConnectionError:  # the receiver aborted and closed: reset on our next read
            closed = True
            break
        if time.monotonic() - started > 20:
            break
    assert closed or trickling.closed_within(1), "one byte a second must not keep an association"
    assert time.monotonic() - started < 20


def fuzz_cases(seed: int = 1404) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    good = associate_rq()
    cases = [
        ("truncated header", good[:3]),
        ("length beyond the data", good[:6] + good[6:40]),
        ("unknown PDU type", bytes([0x09, 0]) + struct.pack(">L", 4) + b"\x00" * 4),
        ("P-DATA before association", pdu.p_data(1, True, True, b"\x00" * 10)),
        ("huge control PDU length", bytes([0x01, 0]) + struct.pack(">L", 2**31) + b"\x00" * 64),
        ("300 contexts", associate_rq(contexts=300)),
        ("control characters in the calling AE", good[:26] + b"AB\x1bC\x07".ljust(16) + good[42:]),
        ("control characters in the called AE", good[:10] + b"STUDY\nSTREAM".ljust(16) + good[26:]),
        (
            "garbage A-ASSOCIATE-RQ",
            bytes([0x01, 0]) + struct.pack(">L", 68) + bytes(rng.randrange(256) for _ in range(68)),
        ),
    ]
    for i in range(60):  # random bit flips and cuts of a valid request
        data = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(6, len(data))] = rng.randrange(256)
        cases.append((f"mutated request {i}", bytes(data[: rng.randint(6, len(data))])))
    return cases


def established_fuzz_cases(seed: int = 7) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    item = pdu.p_data(1, True, True, b"\x00" * 8)[6:]
    return [
        ("PDV length beyond the PDU", pdu.pdu(pdu.P_DATA_TF, struct.pack(">L", 5000) + item[4:])),
        ("PDV length below its header", pdu.pdu(pdu.P_DATA_TF, struct.pack(">L", 1) + item[4:])),
        ("PDV on an even context ID", pdu.p_data(2, True, True, b"\x00" * 8)),
        ("PDV on a context never proposed", pdu.p_data(99, True, True, b"\x00" * 8)),
        ("command that does not decode", pdu.p_data(1, True, True, bytes(rng.randrange(256) for _ in range(40)))),
        ("dataset without its command", pdu.p_data(1, False, True, b"\x00" * 8)),
        ("A-ASSOCIATE-RQ again", associate_rq()),
        ("unknown PDU type", bytes([0x55, 0]) + struct.pack(">L", 0)),
        ("empty P-DATA", pdu.pdu(pdu.P_DATA_TF, b"")),
    ]


def test_malformed_pdus_end_in_an_abort_a_reject_or_a_close_and_the_receiver_serves_on(receiver_factory) -> None:
    receiver = receiver_factory(STUDYSTREAM_RECEIVER_ACSE_TIMEOUT="2", STUDYSTREAM_RECEIVER_NETWORK_TIMEOUT="2").start()
    outcomes: dict[str, int | None] = {}
    for name, data in fuzz_cases():
        peer = RawPeer(receiver.port)
        peer.send(data)
        peer.sock.shutdown(socket.SHUT_WR)  # all it will ever send (silence is tested on its own)
        answer = peer.read_pdu_type()
        assert answer in (None, pdu.A_ASSOCIATE_RJ, pdu.A_ABORT, pdu.A_ASSOCIATE_AC), (name, answer)
        outcomes[name] = answer
        peer.close()
    assert outcomes["300 contexts"] == pdu.A_ASSOCIATE_RJ
    assert outcomes["control characters in the calling AE"] == pdu.A_ASSOCIATE_RJ
    assert outcomes["unknown PDU type"] == pdu.A_ABORT
    for name, data in established_fuzz_cases():
        peer = RawPeer(receiver.port)
        peer.send(associate_rq())
        assert peer.read_pdu_type() == pdu.A_ASSOCIATE_AC
        peer.send(data)
        answer = peer.read_pdu_type()
        assert answer in (None, pdu.A_ABORT), (name, answer)
        peer.close()
    # No association left behind by any of them: each ended, none hangs.
    wait_for(lambda: receiver.health()["associations"] == 0, 15, what="every fuzzed association closed")
    assert receiver.process is not None and receiver.process.poll() is None
    assert echoscu(receiver.port).returncode == 0
    rss_kb = int(next(line.split()[1] for line in Path(f"/proc/{receiver.process.pid}/status").read_text().splitlines()
                     if line.startswith("VmHWM:")))  # fmt: skip
    assert rss_kb < 400_000, f"peak RSS {rss_kb} kB"


def test_association_rejections_carry_the_right_result_source_and_reason(receiver_factory) -> None:
    receiver = receiver_factory(
        STUDYSTREAM_RECEIVER_ALLOWED_CALLING_AES="GOODAE", STUDYSTREAM_RECEIVER_MAX_ASSOCIATIONS_PER_AE="1"
    ).start()

    def rejection(data: bytes) -> tuple[int, int, int] | None:
        peer = RawPeer(receiver.port)
        peer.send(data)
        header = peer.sock.recv(6, socket.MSG_WAITALL)
        body = peer.sock.recv(struct.unpack(">L", header[2:6])[0], socket.MSG_WAITALL)
        peer.close()
        return (body[1], body[2], body[3]) if header[0] == pdu.A_ASSOCIATE_RJ else None

    assert rejection(associate_rq(calling="OTHER")) == (1, 1, 3)  # calling AE not allowed
    assert rejection(associate_rq(calling="GOODAE", called="SOMEONE")) == (1, 1, 7)  # called AE not recognised
    assert rejection(associate_rq(calling="GOODAE", abstract="1.2.826.0.1.3680043.10.1404.999")) == (1, 1, 1)
    holder = RawPeer(receiver.port)
    holder.send(associate_rq(calling="GOODAE"))
    assert holder.read_pdu_type() == pdu.A_ASSOCIATE_AC
    assert rejection(associate_rq(calling="GOODAE")) == (2, 3, 2)  # limit reached: transient, local limit
    holder.close()
