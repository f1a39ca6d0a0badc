"""The STOW-RS front door in process (aiohttp's test server, a real store and outbox, no broker): hostile
multipart bodies map to 4xx or failed parts, never to a crash, a hang or a file left behind."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import tempfile
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from domain.dicom_event import EventLimits
from domain.events import decode_raw_record
from scp.cstore import StoreLimits
from scp.metrics import ReceiverMetrics
from scp.outbox import Outbox
from scp.storage import InstanceStore
from scp.stow import StowConfig, StowService
from tests.scp.conftest import make_dataset, partial_files

TOKEN = "test-token-not-a-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_PART = 64 * 1024
MAX_BODY = 512 * 1024


def part10(**kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    make_dataset(**kwargs).save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


INSTANCES = [part10(study_uid="1.2.826.0.1.3680043.10.1404.5", instance_number=n) for n in range(1, 4)]


@dataclass
class Door:
    client: TestClient
    store: InstanceStore
    outbox: Outbox
    metrics: ReceiverMetrics

    def stored_files(self) -> list[Path]:
        return [p for p in self.store.root.rglob("*.dcm") if ".incoming" not in p.parts]

    def staged_files(self) -> list[Path]:
        return partial_files(self.store.incoming)

    def records(self) -> list[Any]:
        return [decode_raw_record(entry.value) for entry in self.outbox.pending(10_000)]


@asynccontextmanager
async def front_door(root: Path, **config: Any) -> AsyncIterator[Door]:
    store = InstanceStore(root / "store", fsync=False)
    store.prepare()
    outbox = Outbox(root / "outbox.sqlite", fsync=False)
    metrics = ReceiverMetrics()
    pool = ThreadPoolExecutor(max_workers=4)
    loop = asyncio.get_running_loop()
    deps = SimpleNamespace(
        store=store,
        outbox=outbox,
        metrics=metrics,
        index=None,
        limits=StoreLimits(MAX_PART, MAX_PART, 0, 1024 * 1024, EventLimits(64, 64, 10_240)),
        run_blocking=lambda fn, *args: loop.run_in_executor(pool, partial(fn, *args)),
    )
    options = dict(
        token=TOKEN,
        calling_ae="DICOMWEB",
        called_ae="STUDYSTREAM",
        max_request_bytes=MAX_BODY,
        timeout=2.0,
        boundary=True,
        boundary_max_uids=100,
    )
    options.update(config)
    client = TestClient(TestServer(StowService(deps, StowConfig(**options)).app()))
    await client.start_server()
    try:
        yield Door(client, store, outbox, metrics)
    finally:
        await client.close()
        pool.shutdown(wait=True)
        outbox.close()
        store.close()


def multipart(parts: list[bytes], boundary: str = "b0undary", part_headers: str | None = None) -> bytes:
    headers = "Content-Type: application/dicom\r\n" if part_headers is None else part_headers
    body = b"".join(f"--{boundary}\r\n{headers}\r\n".encode() + data + b"\r\n" for data in parts)
    return body + f"--{boundary}--\r\n".encode()


CONTENT_TYPE = 'multipart/related; type="application/dicom"; boundary=b0undary'


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


# --- hostile bodies ---


def _piece(kind: str, draw: st.DrawFn) -> bytes:
    instance = draw(st.sampled_from(INSTANCES))
    pieces = {
        "dicom": b"--b0undary\r\nContent-Type: application/dicom\r\n\r\n" + instance + b"\r\n",
        "untyped": b"--b0undary\r\n\r\n" + instance + b"\r\n",
        "no_preamble": b"--b0undary\r\n\r\n" + instance[132:] + b"\r\n",
        "not_dicom": b"--b0undary\r\nContent-Type: application/dicom\r\n\r\n" + draw(st.binary(max_size=300)) + b"\r\n",
        "text": b"--b0undary\r\nContent-Type: text/plain\r\n\r\nhello\r\n",
        "huge_header": b"--b0undary\r\nX-Junk: " + b"a" * draw(st.integers(7000, 200_000)) + b"\r\n\r\nxx\r\n",
        "many_headers": b"--b0undary\r\n" + b"X-A: b\r\n" * draw(st.integers(100, 400)) + b"\r\nxx\r\n",
        "nested": (
            b"--b0undary\r\nContent-Type: multipart/related; boundary=inner\r\n\r\n--inner\r\n"
            b"Content-Type: application/dicom\r\n\r\n" + instance + b"\r\n--inner--\r\n\r\n"
        ),
        "boundary_inside": b"--b0undary\r\nContent-Type: application/dicom\r\n\r\n"
        + instance[:200]
        + b"\r\n--b0undaryX\r\n--b0und"
        + instance[200:]
        + b"\r\n",
        "lf_only": b"--b0undary\nContent-Type: application/dicom\n\n" + instance + b"\n",
        "bad_length": b"--b0undary\r\nContent-Length: "
        + draw(st.sampled_from([b"-1", b"99999999", b"1x", b"0"]))
        + b"\r\n\r\n"
        + instance
        + b"\r\n",
        "transfer_encoded": b"--b0undary\r\nContent-Transfer-Encoding: base64\r\n\r\nAAAA\r\n",
        "oversized": b"--b0undary\r\n\r\n" + b"\0" * 128 + b"DICM" + b"\0" * (MAX_PART + 10) + b"\r\n",
        "junk": draw(st.binary(max_size=200)),
    }
    return pieces[kind]


@st.composite
def hostile_requests(draw: st.DrawFn) -> tuple[str, bytes]:
    kinds = st.sampled_from(
        ["dicom", "dicom", "untyped", "no_preamble", "not_dicom", "text", "huge_header", "many_headers", "nested",
         "boundary_inside", "lf_only", "bad_length", "transfer_encoded", "oversized", "junk"]
    )  # fmt: skip
    body = b"".join(_piece(kind, draw) for kind in draw(st.lists(kinds, max_size=5)))
    ending = draw(st.sampled_from([b"--b0undary--\r\n", b"--b0undary--", b"", b"--b0und", b"--b0undary\r\n"]))
    body += ending
    if draw(st.booleans()):
        body = body[: draw(st.integers(0, len(body)))]  # truncated anywhere
    content_type = draw(
        st.sampled_from(
            [
                CONTENT_TYPE,
                "multipart/related; boundary=b0undary",  # no type: judged part by part
                'multipart/related; type="application/dicom"',  # no boundary
                'multipart/related; type="application/dicom+json"; boundary=b0undary',
                "application/dicom",
                'multipart/related; type="application/dicom"; boundary=other',
                'multipart/related; type="application/dicom"; boundary=' + "x" * 71,
                "",
            ]
        )
    )
    return content_type, body


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(hostile_requests())
def test_hostile_bodies_get_a_4xx_or_failed_parts_never_a_crash_a_hang_or_a_stray_file(
    request: tuple[str, bytes],
) -> None:
    content_type, body = request

    async def scenario(root: Path) -> None:
        async with front_door(root) as door:
            headers = {**AUTH, "Content-Type": content_type} if content_type else dict(AUTH)
            response = await door.client.post("/dicomweb/studies", data=body, headers=headers)
            text = await response.read()
            event(f"status {response.status}")
            assert response.status in {200, 202, 409, 400, 413, 415}, (response.status, text[:300])
            assert not door.staged_files(), "a partial file was left in the incoming directory"
            events = [r for r in door.records() if not hasattr(r, "record_type")]
            assert len(door.stored_files()) == len({e.sop_instance_uid for e in events})
            if response.status in {200, 202, 409}:
                answer = json.loads(text)
                referenced = answer.get("00081199", {}).get("Value", [])
                assert {item["00081155"]["Value"][0] for item in referenced} == {e.sop_instance_uid for e in events}
                assert (response.status == 200) == ("00081198" not in answer and bool(referenced))
            else:
                assert not events  # refused as a whole: nothing stored

    with tempfile.TemporaryDirectory() as root:
        run(scenario(Path(root)))


# --- the protocol around the body ---


def test_three_instances_are_stored_with_a_boundary_record_after_their_events(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with front_door(tmp_path) as door:
            response = await door.client.post(
                "/dicomweb/studies/1.2.826.0.1.3680043.10.1404.5",
                data=multipart(INSTANCES),
                headers={**AUTH, "Content-Type": CONTENT_TYPE, "Accept": "application/dicom+json"},
            )
            assert response.status == 200, await response.text()
            assert response.content_type == "application/dicom+json"
            answer = await response.json(content_type=None)
            assert len(answer["00081199"]["Value"]) == 3 and "00081198" not in answer
            records = door.records()
            assert [type(r).__name__ for r in records] == ["InstanceEvent"] * 3 + ["StowBoundary"]
            assert {r.calling_ae for r in records} == {"DICOMWEB"}
            assert set(records[-1].sop_instance_uids) == {r.sop_instance_uid for r in records[:3]}
            stored = sorted(p.read_bytes() for p in door.stored_files())
            assert stored == sorted(INSTANCES)  # byte for byte as received
            assert 'studystream_receiver_stow_instances_total{outcome="stored"} 3.0' in _metrics(door)

    run(scenario())


def test_a_part_without_preamble_is_stored_with_one(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with front_door(tmp_path) as door:
            response = await door.client.post(
                "/dicomweb/studies",
                data=multipart([INSTANCES[0][132:]]),
                headers={**AUTH, "Content-Type": CONTENT_TYPE},
            )
            assert response.status == 200, await response.text()
            (stored,) = door.stored_files()
            assert stored.read_bytes() == INSTANCES[0]  # make_dataset's files have an all-zero preamble

    run(scenario())


def test_a_failed_part_means_202_and_no_boundary_record(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with front_door(tmp_path) as door:
            other = part10()  # another study
            response = await door.client.post(
                "/dicomweb/studies/1.2.826.0.1.3680043.10.1404.5",
                data=multipart([INSTANCES[0], other]),
                headers={**AUTH, "Content-Type": CONTENT_TYPE, "Accept": "application/dicom+xml"},
            )
            assert response.status == 202
            assert response.content_type == "application/dicom+xml"
            text = await response.text()
            assert "FailedSOPSequence" in text and f'<Value number="1">{0xA900}</Value>' in text
            assert [type(r).__name__ for r in door.records()] == ["InstanceEvent"]
            assert 'studystream_receiver_stow_instances_total{outcome="study_mismatch"} 1.0' in _metrics(door)

    run(scenario())


def test_without_the_token_nothing_is_read_and_401_names_the_scheme(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with front_door(tmp_path) as door:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
                response = await door.client.post(
                    "/dicomweb/studies",
                    data=multipart(INSTANCES[:1]),
                    headers={**headers, "Content-Type": CONTENT_TYPE},
                )
                assert response.status == 401
                assert response.headers["WWW-Authenticate"].startswith('Bearer realm="studystream"')
            assert not door.stored_files() and not door.records()

    run(scenario())


def test_a_declared_length_over_the_limit_is_refused_before_the_body_with_expect_continue(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with front_door(tmp_path) as door:
            port = door.client.port
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                f"POST /dicomweb/studies HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                f"Content-Type: {CONTENT_TYPE}\r\nContent-Length: {MAX_BODY + 1}\r\n"
                "Expect: 100-continue\r\n\r\n".encode()
            )
            await writer.drain()
            status_line = await asyncio.wait_for(reader.readline(), 10)
            assert status_line.startswith(b"HTTP/1.1 413"), status_line
            writer.close()

    run(scenario())


def test_a_body_growing_past_the_limit_is_cut_off_with_413(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with front_door(tmp_path) as door:

            async def chunks() -> AsyncIterator[bytes]:
                yield b"--b0undary\r\nContent-Type: application/dicom\r\n\r\n"
                for _ in range(MAX_BODY // 65536 + 2):
                    yield b"\0" * 65536

            response = await door.client.post(
                "/dicomweb/studies", data=chunks(), headers={**AUTH, "Content-Type": CONTENT_TYPE}
            )  # chunked: no Content-Length to refuse up front
            assert response.status == 413
            assert not door.staged_files() and not door.stored_files()

    run(scenario())


def test_a_peer_gone_mid_body_leaves_nothing_behind(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with front_door(tmp_path) as door:
            with socket.create_connection(("127.0.0.1", door.client.port)) as sock:
                head = (
                    f"POST /dicomweb/studies HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                    f"Content-Type: {CONTENT_TYPE}\r\nContent-Length: 100000\r\n\r\n"
                )
                sock.sendall(head.encode() + b"--b0undary\r\n\r\n" + INSTANCES[0][:500])
            for _ in range(100):  # until the server noticed (bounded)
                await asyncio.sleep(0.05)
                if 'studystream_receiver_stow_requests_total{status="400"}' in _metrics(door):
                    break
            assert 'studystream_receiver_stow_requests_total{status="400"} 1.0' in _metrics(door)
            assert not door.staged_files() and not door.stored_files()

    run(scenario())


def test_wrong_media_types_are_415_and_an_unacceptable_accept_is_406(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with front_door(tmp_path) as door:
            cases = [
                ({"Content-Type": "application/dicom"}, 415),
                ({"Content-Type": 'multipart/related; type="application/dicom+json"; boundary=b0undary'}, 415),
                ({"Content-Type": CONTENT_TYPE, "Accept": "text/html"}, 406),
            ]
            for headers, status in cases:
                response = await door.client.post("/dicomweb/studies", data=INSTANCES[0], headers={**AUTH, **headers})
                assert response.status == status
            response = await door.client.post(
                "/dicomweb/studies/not-a-uid",
                data=multipart(INSTANCES[:1]),
                headers={**AUTH, "Content-Type": CONTENT_TYPE},
            )
            assert response.status == 400

    run(scenario())


def _metrics(door: Door) -> str:
    from prometheus_client import generate_latest

    return generate_latest(door.metrics.registry).decode()
