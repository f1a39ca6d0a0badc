"""`studystream receive` as a DICOMweb STOW-RS origin server, with curl and dicomweb-client as the peers and the
real broker behind: stored as received, one event each on imaging.raw, the PS3.18 response, auth and limits."""

from __future__ import annotations

import io
import json
import socket
import subprocess
from pathlib import Path

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread, dcmwrite

from app.settings import Settings
from tests.conftest import free_port, unique_uid, wait_for
from tests.scp.conftest import Receiver, make_dataset, read_events, write_dataset

TOKEN = "stow-test-token"  # a test value, not a secret
BOUNDARY = "studystream-test-boundary"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
MAX_REQUEST = 1024 * 1024


def _start(receiver_factory) -> tuple[Receiver, str]:
    port = free_port()
    receiver = receiver_factory(
        STUDYSTREAM_RECEIVER_DICOMWEB_PORT=str(port),
        STUDYSTREAM_RECEIVER_DICOMWEB_TOKEN=TOKEN,
        STUDYSTREAM_RECEIVER_STOW_IS_STUDY_BOUNDARY="true",
        STUDYSTREAM_RECEIVER_DICOMWEB_MAX_REQUEST_BYTES=str(MAX_REQUEST),
    ).start()

    def listening() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    wait_for(listening, 15, what="the DICOMweb port")
    return receiver, f"http://127.0.0.1:{port}/dicomweb"


def _body(path: Path, files: list[Path]) -> Path:
    parts = b"".join(
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + file.read_bytes() + b"\r\n"
        for file in files
    )
    path.write_bytes(parts + f"--{BOUNDARY}--\r\n".encode())
    return path


def curl(url: str, body: Path, *headers: str, token: str | None = TOKEN) -> tuple[int, dict[str, str], bytes]:
    argv = ["curl", "-sS", "-D", "-", "-X", "POST", "--data-binary", f"@{body}", "-H", f"Content-Type: {CONTENT_TYPE}"]
    if token:
        argv += ["-H", f"Authorization: Bearer {token}"]
    for header in headers:
        argv += ["-H", header]
    result = subprocess.run([*argv, url], capture_output=True, timeout=60, check=True)
    head, _, payload = result.stdout.partition(b"\r\n\r\n")
    while head.startswith(b"HTTP/1.1 100"):  # curl's Expect: 100-continue for larger bodies
        head, _, payload = payload.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    fields = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), fields, payload


def test_curl_and_dicomweb_client_store_through_stow_rs_like_c_store(
    receiver_factory, kafka: Settings, tmp_path: Path
) -> None:
    receiver, base = _start(receiver_factory)
    assert receiver.health()["dicomweb_port"] == int(base.rsplit(":", 1)[1].split("/")[0])
    study_a, study_b, study_c = unique_uid(), unique_uid(), unique_uid()
    sent_a = [write_dataset(make_dataset(study_a, instance_number=n), tmp_path / "a") for n in (1, 2)]

    # curl: two instances of one study, to the study's URL
    status, headers, payload = curl(f"{base}/studies/{study_a}", _body(tmp_path / "a.body", sent_a))
    assert status == 200, payload
    assert headers["content-type"] == "application/dicom+json"
    answer = json.loads(payload)
    assert "00081198" not in answer
    referenced = {item["00081155"]["Value"][0] for item in answer["00081199"]["Value"]}
    assert referenced == {str(dcmread(p).SOPInstanceUID) for p in sent_a}

    # dicomweb-client: one study to /studies, then a request mixing the URL's study and another one
    client = DICOMwebClient(url=base, headers={"Authorization": f"Bearer {TOKEN}"})
    ds_b = make_dataset(study_b)
    stored_b = client.store_instances([ds_b])
    assert [str(item.ReferencedSOPInstanceUID) for item in stored_b.ReferencedSOPSequence] == [ds_b.SOPInstanceUID]
    ds_c, stranger = make_dataset(study_c), make_dataset(unique_uid())
    mixed = client.store_instances([ds_c, stranger], study_instance_uid=study_c)  # 202: not raised
    assert [str(item.ReferencedSOPInstanceUID) for item in mixed.ReferencedSOPSequence] == [ds_c.SOPInstanceUID]
    (failed,) = mixed.FailedSOPSequence
    assert (str(failed.ReferencedSOPInstanceUID), failed.FailureReason) == (stranger.SOPInstanceUID, 0xA900)

    # only instances of another study: 409, the reasons in the XML body asked for
    other = write_dataset(make_dataset(unique_uid()), tmp_path / "x")
    status, headers, payload = curl(
        f"{base}/studies/{study_c}", _body(tmp_path / "x.body", [other]), "Accept: application/dicom+xml"
    )
    assert status == 409 and headers["content-type"] == "application/dicom+xml"
    assert b'keyword="FailedSOPSequence"' in payload and f'<Value number="1">{0xA900}</Value>'.encode() in payload

    # no or a wrong token: 401 and nothing read; over the size limit: 413
    for token in (None, "not-the-token"):
        status, headers, _ = curl(f"{base}/studies", tmp_path / "a.body", token=token)
        assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    big = tmp_path / "big.body"
    big.write_bytes(b"\0" * (MAX_REQUEST + 1))
    assert curl(f"{base}/studies", big)[0] == 413
    with pytest.raises(requests.HTTPError, match="401"):
        DICOMwebClient(url=base).store_instances([make_dataset()])

    # dicomweb-client writes no preamble: the stored file gets one, every other byte as sent
    encoded = io.BytesIO()
    dcmwrite(encoded, ds_b)
    stored = receiver.storage / study_b / ds_b.SeriesInstanceUID / f"{ds_b.SOPInstanceUID}.dcm"
    assert stored.read_bytes() == b"\0" * 128 + b"DICM" + encoded.getvalue()

    # the files as received, one event each (calling AE DICOMWEB), and a boundary for each complete request
    for path in sent_a:
        ds = dcmread(path)
        assert (receiver.storage / study_a / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm").read_bytes() == (
            path.read_bytes()
        )
    records = [value for _, value in read_events(kafka, receiver.topic, expected=6)]
    instances = [r for r in records if "record_type" not in r]
    boundaries = [r for r in records if r.get("record_type") == "stow_request"]
    assert sorted(r["study_uid"] for r in instances) == sorted([study_a, study_a, study_b, study_c])
    assert {(r["calling_ae"], r["called_ae"]) for r in instances} == {("DICOMWEB", "STUDYSTREAM")}
    assert {r["study_uid"]: len(r["sop_instance_uids"]) for r in boundaries} == {study_a: 2, study_b: 1}
    metrics = receiver.metrics()
    for line in (
        'studystream_receiver_stow_requests_total{status="200"} 2.0',
        'studystream_receiver_stow_requests_total{status="202"} 1.0',
        'studystream_receiver_stow_requests_total{status="409"} 1.0',
        'studystream_receiver_stow_requests_total{status="401"} 3.0',
        'studystream_receiver_stow_requests_total{status="413"} 1.0',
        'studystream_receiver_stow_instances_total{outcome="study_mismatch"} 2.0',
    ):
        assert line in metrics, line
    assert "Doe" not in receiver.log() and "PID-1" not in receiver.log()


def test_without_a_token_the_front_door_stays_closed(receiver_factory) -> None:
    port = free_port()
    receiver = receiver_factory(STUDYSTREAM_RECEIVER_DICOMWEB_PORT=str(port)).start()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert "DICOMweb STOW-RS off" in receiver.log()
    assert receiver.health()["dicomweb_port"] is None
