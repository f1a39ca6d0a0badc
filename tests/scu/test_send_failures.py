"""What the sender reports when the peer says no, or is not there; and that studies really overlap."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from scu import synth
from scu.cli import send
from tests.conftest import free_port, wait_for
from tests.scu.conftest import PyPeer

PeerFactory = Callable[..., PyPeer]


def _send(peer_port: int, called_ae: str, *args: str) -> tuple[int, dict]:
    argv = ["--host", "127.0.0.1", "--port", str(peer_port), "--called-ae", called_ae, "--json", "--no-progress"]
    result = CliRunner().invoke(send, [*args, *argv], catch_exceptions=False)
    return result.exit_code, json.loads(result.stdout)


def _ct_and_mr_study(directory: Path) -> tuple[list[Path], list[Path]]:
    ct = synth.generate_studies(instances=2, modality="CT")
    mr = synth.generate_studies(instances=2, modality="MR")
    for ds in mr:
        ds.StudyInstanceUID = ct[0].StudyInstanceUID
    return [synth.write_dataset(ds, directory) for ds in ct], [synth.write_dataset(ds, directory) for ds in mr]


def test_rejected_context_fails_its_files_with_the_reason(tmp_path: Path, pynetdicom_peer: PeerFactory) -> None:
    peer = pynetdicom_peer([CTImageStorage], [ExplicitVRLittleEndian])
    ct_paths, mr_paths = _ct_and_mr_study(tmp_path)
    code, summary = _send(peer.port, peer.ae_title, str(tmp_path))
    assert code == 1
    assert sorted(peer.stored) == sorted(p.stem for p in ct_paths)
    failed = {Path(f["path"]).stem: f["reason"] for f in summary["failed_files"]}
    assert set(failed) == {p.stem for p in mr_paths}
    assert all("SOP class not supported" in reason for reason in failed.values())


def test_unsupported_transfer_syntax_fails_only_those_files(tmp_path: Path, pynetdicom_peer: PeerFactory) -> None:
    peer = pynetdicom_peer([CTImageStorage], [ExplicitVRLittleEndian])
    datasets = synth.generate_studies(instances=2, modality="CT")
    good = synth.write_dataset(datasets[0], tmp_path)
    bad = synth.write_dataset(datasets[1], tmp_path, ImplicitVRLittleEndian)
    code, summary = _send(peer.port, peer.ae_title, str(tmp_path))
    assert code == 1
    assert peer.stored == [good.stem]
    failed = [(Path(f["path"]).stem, f["reason"]) for f in summary["failed_files"]]
    assert len(failed) == 1 and failed[0][0] == bad.stem
    assert "transfer syntax not supported" in failed[0][1]


def test_failure_status_is_reported_per_file(tmp_path: Path, pynetdicom_peer: PeerFactory) -> None:
    paths = synth.write_studies(tmp_path, instances=3, modality="CT")
    refused = paths[1].stem
    status_for = lambda uid: 0xA700 if uid == refused else 0  # noqa: E731
    peer = pynetdicom_peer([CTImageStorage], [ExplicitVRLittleEndian], status_for=status_for)
    code, summary = _send(peer.port, peer.ae_title, str(tmp_path))
    assert code == 1
    assert summary["stored"] == 2
    assert [(Path(f["path"]).stem, f["reason"]) for f in summary["failed_files"]] == [
        (refused, "status 0xA700 (Failure): the receiver is out of resources (storage, size limits): try again later")
    ]


def test_rejected_association_is_not_retried(tmp_path: Path, pynetdicom_peer: PeerFactory) -> None:
    peer = pynetdicom_peer([CTImageStorage], [ExplicitVRLittleEndian], require_called_aet=True)
    synth.write_studies(tmp_path, instances=2, modality="CT")
    code, summary = _send(peer.port, "WRONG_AE", str(tmp_path), "--retries", "3", "--retry-backoff", "5")
    assert code == 1
    assert summary["retries"] == 0
    assert all("association rejected" in f["reason"] for f in summary["failed_files"])


def test_refused_connection_is_retried_then_reported(tmp_path: Path) -> None:
    synth.write_studies(tmp_path, instances=2, modality="CT")
    code, summary = _send(free_port(), "NOBODY", str(tmp_path), "--retries", "2", "--retry-backoff", "0.01")
    assert code == 1
    assert summary["retries"] == 2
    assert summary["failed"] == 2
    assert all("gave up after 3 attempt(s)" in f["reason"] for f in summary["failed_files"])


def test_storage_commitment_request_names_every_stored_instance(tmp_path: Path, pynetdicom_peer: PeerFactory) -> None:
    peer = pynetdicom_peer([CTImageStorage], [ExplicitVRLittleEndian], commitment=True)
    paths = synth.write_studies(tmp_path, instances=3, modality="CT")
    options = ("--storage-commitment", "--commitment-timeout", "0.5")
    code, summary = _send(peer.port, peer.ae_title, str(tmp_path), *options)
    assert code == 0
    assert len(peer.commitment_requests) == 1
    request = peer.commitment_requests[0]
    assert request.TransactionUID
    referenced = sorted(item.ReferencedSOPInstanceUID for item in request.ReferencedSOPSequence)
    assert referenced == sorted(p.stem for p in paths)
    assert summary["per_study"][0]["storage_commitment"] == "requested (no result on this association)"


def test_storage_commitment_result_on_the_same_association(tmp_path: Path, pynetdicom_peer: PeerFactory) -> None:
    peer = pynetdicom_peer([CTImageStorage], [ExplicitVRLittleEndian], commitment=True, commitment_report=True)
    synth.write_studies(tmp_path, instances=2, modality="CT")
    code, summary = _send(peer.port, peer.ae_title, str(tmp_path), "--storage-commitment", "--commitment-timeout", "10")
    assert code == 0
    assert summary["per_study"][0]["storage_commitment"] == "committed"


def test_studies_in_flight_overlap_at_the_peer(tmp_path: Path, pynetdicom_peer: PeerFactory) -> None:
    two_open = threading.Event()

    def hold_until_two_associations(peer: PyPeer) -> None:
        # Each store waits (bounded) until a second association is open: only parallel sending gets there.
        if peer.max_open_associations >= 2:
            two_open.set()
        two_open.wait(timeout=10)

    peer = pynetdicom_peer([CTImageStorage], [ExplicitVRLittleEndian], on_store=hold_until_two_associations)
    synth.write_studies(tmp_path, studies=3, instances=2, modality="CT")
    code, summary = _send(peer.port, peer.ae_title, str(tmp_path), "--studies-in-flight", "3")
    assert code == 0, summary["failed_files"]
    wait_for(lambda: len(peer.stored) == 6, 5, what="6 stores at the peer")
    assert peer.max_open_associations >= 2
