"""`studystream send` / `send-file` / `echo` against dcmtk storescp writing exactly what it receives."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

from scu import synth
from scu.cli import echo, send, send_file
from tests.conftest import free_port
from tests.scu.conftest import StoreSCP, dataset_bytes, received_by_sop_uid


def _peer_args(peer: StoreSCP) -> list[str]:
    return ["--host", "127.0.0.1", "--port", str(peer.port), "--called-ae", peer.ae_title, "--calling-ae", "SENDTEST"]


def _send(args: list[str], command=send) -> tuple[int, dict]:
    result = CliRunner().invoke(command, [*args, "--json", "--no-progress"], catch_exceptions=False)
    return result.exit_code, json.loads(result.stdout)


def test_every_file_arrives_bit_identical_and_non_dicom_is_skipped(tmp_path: Path, storescp: StoreSCP) -> None:
    source = tmp_path / "source"
    paths = synth.write_studies(source, studies=5, series=2, instances=3)  # CT, MR, CR, DX and US
    datasets = synth.generate_studies(series=1, instances=3, modality="CT")
    for ds, syntax in zip(datasets, (ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, None), strict=True):
        paths.append(synth.write_dataset(ds, source, syntax))
    (source / "notes.txt").write_text("hello")

    code, summary = _send([str(source), *_peer_args(storescp)])

    assert code == 0, summary["failed_files"]
    assert (summary["stored"], summary["failed"], summary["skipped"], summary["studies"]) == (33, 0, 1, 6)
    assert summary["skipped_files"][0]["path"].endswith("notes.txt")
    received = received_by_sop_uid(storescp.out_dir)
    assert len(received) == 33
    for path in paths:
        assert dataset_bytes(received[path.stem]) == dataset_bytes(path), path


def test_several_studies_in_parallel_all_arrive(tmp_path: Path, storescp: StoreSCP) -> None:
    paths = synth.write_studies(tmp_path / "source", studies=4, series=1, instances=5)
    code, summary = _send([str(tmp_path / "source"), *_peer_args(storescp), "--studies-in-flight", "3"])
    assert code == 0, summary["failed_files"]
    assert [s["stored"] for s in summary["per_study"]] == [5, 5, 5, 5]
    received = received_by_sop_uid(storescp.out_dir)
    assert all(dataset_bytes(received[p.stem]) == dataset_bytes(p) for p in paths)


def test_send_file_sends_single_files(tmp_path: Path, storescp: StoreSCP) -> None:
    paths = synth.write_studies(tmp_path, studies=2, instances=2)
    code, summary = _send([str(paths[0]), str(paths[3]), *_peer_args(storescp)], send_file)
    assert code == 0
    assert summary["stored"] == 2
    assert set(received_by_sop_uid(storescp.out_dir)) == {paths[0].stem, paths[3].stem}


def test_storage_commitment_is_reported_unsupported_by_storescp(tmp_path: Path, storescp: StoreSCP) -> None:
    synth.write_studies(tmp_path, instances=2)
    code, summary = _send([str(tmp_path), *_peer_args(storescp), "--storage-commitment"])
    assert code == 0
    assert summary["per_study"][0]["storage_commitment"] == "not supported by the peer"


def test_dry_run_lists_studies_and_sends_nothing(tmp_path: Path, storescp: StoreSCP) -> None:
    synth.write_studies(tmp_path, studies=2, instances=3)
    result = CliRunner().invoke(send, [str(tmp_path), *_peer_args(storescp), "--dry-run", "--json"])
    assert result.exit_code == 0
    plan = json.loads(result.stdout)
    assert [s["instances"] for s in plan["studies"]] == [3, 3]
    assert list(storescp.out_dir.iterdir()) == []


def test_nothing_to_send_is_not_success(tmp_path: Path, storescp: StoreSCP) -> None:
    (tmp_path / "a.txt").write_text("x")
    code, summary = _send([str(tmp_path), *_peer_args(storescp)])
    assert code == 3
    assert summary["skipped"] == 1


def test_echo_exit_status_says_whether_it_worked(storescp: StoreSCP) -> None:
    runner = CliRunner()
    assert runner.invoke(echo, _peer_args(storescp)).exit_code == 0
    nobody = ["--host", "127.0.0.1", "--port", str(free_port()), "--called-ae", "NOBODY"]
    assert runner.invoke(echo, nobody).exit_code == 1
