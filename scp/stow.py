"""DICOMweb STOW-RS (PS3.18 10.5) on the receiver's own HTTP port, in the receiver's asyncio loop (aiohttp).

``POST /dicomweb/studies`` and ``POST /dicomweb/studies/{StudyInstanceUID}`` take
``multipart/related; type="application/dicom"``. Before the body is read (also in answer to ``Expect:
100-continue``): the bearer token (401), the Accept header (406), the URL's UID (400), the declared size
(413) and the content type (415; no boundary: 400). Then each part streams, in chunks of
:data:`CHUNK_BYTES`, into a staged file exactly as a C-STORE's dataset does (never more than a chunk in
memory), and goes through the same store path in the thread pool (:func:`scp.stow_store.store_part`).
A part's headers are bounded by aiohttp (8 KiB a line, 128 lines); every read waits at most
``receiver_network_timeout``; a body growing past ``receiver_dicomweb_max_request_bytes`` is cut off
with 413. The answer is the Store Instances Response (:mod:`domain.stow`): 200, 202 or 409.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import ssl
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from aiohttp import ClientError, web
from aiohttp.helpers import parse_mimetype
from aiohttp.http import HttpVersion11
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.multipart import BodyPartReader, MultipartReader

from domain.statuses import REFUSAL_STATUS
from domain.stow import PartOutcome, choose_media_type, render, request_uid, response_dataset, response_status
from domain.uids import is_valid_uid
from scp.cstore import StagedInstance
from scp.stow_store import HttpReception, add_boundaries, store_part

log = logging.getLogger(f"studystream.{__name__}")

CHUNK_BYTES = 256 * 1024
PREAMBLE_BYTES = 128
ROUTES = ("/dicomweb/studies", "/dicomweb/studies/{study}")
DICOM = "application/dicom"
_IDENTITY_ENCODINGS = {"", "binary", "7bit", "8bit", "identity"}
# What a broken, truncated or hostile body raises while it is read: the rest of the request is lost.
BODY_ERRORS = (ValueError, AssertionError, TimeoutError, ConnectionError, HttpProcessingError, ClientError)


@dataclass(frozen=True, slots=True)
class StowConfig:
    token: str | None  # None: no bearer token (the TLS client certificate authenticates)
    calling_ae: str
    called_ae: str
    max_request_bytes: int
    timeout: float
    boundary: bool
    boundary_max_uids: int


def stow_config(settings: Any, ae_title: str) -> StowConfig | None:
    """The front door's configuration, or None when it stays off (port 0; or no way to authenticate)."""
    if not settings.receiver_dicomweb_port:
        return None
    token = settings.receiver_dicomweb_token.get_secret_value() if settings.receiver_dicomweb_token else None
    if not token and not (settings.receiver_tls_ca and settings.receiver_tls_cert):
        log.warning(
            "DICOMweb STOW-RS off: set STUDYSTREAM_RECEIVER_DICOMWEB_TOKEN (or TLS client certificates with "
            "STUDYSTREAM_RECEIVER_TLS_CA), or STUDYSTREAM_RECEIVER_DICOMWEB_PORT=0 to silence this"
        )
        return None
    return StowConfig(
        token=token or None,
        calling_ae=settings.receiver_dicomweb_calling_ae,
        called_ae=ae_title,
        max_request_bytes=settings.receiver_dicomweb_max_request_bytes,
        timeout=settings.receiver_network_timeout,
        boundary=settings.receiver_stow_is_study_boundary,
        boundary_max_uids=settings.receiver_commitment_record_max_uids,
    )


class _TooLarge(Exception):
    """The body grew past ``receiver_dicomweb_max_request_bytes``."""


def _plain(status: int, text: str, **headers: str) -> web.Response:
    response = web.Response(status=status, text=text + "\n", headers=headers)
    response.force_close()  # the body was not (all) read: this connection cannot carry another request
    return response


def media_type(value: str) -> str:
    """``type/subtype[+suffix]`` of a Content-Type value, lower case, without parameters."""
    media = parse_mimetype(value)
    return (f"{media.type}/{media.subtype}" + (f"+{media.suffix}" if media.suffix else "")).lower()


def part_problem(headers: Any) -> str | None:
    """Why a part is not one PS3.10 instance this receiver stores as received (None: it is)."""
    media = media_type(headers.get("Content-Type", DICOM))
    if media != DICOM:
        return f"part of type {media}"[:80]
    if headers.get("Content-Transfer-Encoding", "").strip().lower() not in _IDENTITY_ENCODINGS:
        return "part with a content transfer encoding"
    if headers.get("Content-Encoding", "").strip().lower() not in _IDENTITY_ENCODINGS:
        return "part with a content encoding"
    return None


def with_preamble(head: bytes) -> bytes:
    """The first bytes of a part, with the 128-byte preamble and ``DICM`` prepended when it starts with the
    File Meta group itself (pydicom-based senders, dicomweb-client among them, write no preamble)."""
    if head[:2] == b"\x02\x00" and head[PREAMBLE_BYTES : PREAMBLE_BYTES + 4] != b"DICM":
        return b"\0" * PREAMBLE_BYTES + b"DICM" + head
    return head


class StowService:
    """The STOW-RS front door of one receiving process (``deps``: :class:`scp.association.ReceiverDeps`)."""

    def __init__(self, deps: Any, config: StowConfig) -> None:
        self.deps, self.config = deps, config

    def app(self) -> web.Application:
        app = web.Application()
        for route in ROUTES:
            app.router.add_post(route, self.handle, expect_handler=self.expect)
        return app

    # --- before the body ---

    def gate(self, request: web.Request) -> web.Response | None:
        """The refusal that needs no body (or None: read it)."""
        config = self.config
        if config.token is not None:
            scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
            if not (
                scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), config.token.encode())
            ):
                challenge = 'Bearer realm="studystream"' + (', error="invalid_token"' if credentials else "")
                return _plain(401, "a valid bearer token is required", **{"WWW-Authenticate": challenge})
        if choose_media_type(request.headers.get("Accept")) is None:
            return _plain(406, "the response is application/dicom+json or application/dicom+xml")
        study = request.match_info.get("study")
        if study is not None and not is_valid_uid(study):
            return _plain(400, "the URL's StudyInstanceUID is not a UID")
        if request.content_length is not None and request.content_length > config.max_request_bytes:
            return _plain(413, f"the body is limited to {config.max_request_bytes} bytes")
        media = parse_mimetype(request.headers.get("Content-Type", ""))
        if (media.type, media.subtype) != ("multipart", "related"):
            return _plain(415, 'the request must be multipart/related; type="application/dicom"')
        if media_type(media.parameters.get("type", DICOM)) != DICOM:
            return _plain(415, "only application/dicom parts are stored (no metadata and bulk data requests)")
        if not 1 <= len(media.parameters.get("boundary", "")) <= 70:
            return _plain(400, "the multipart boundary is missing or longer than 70 characters")
        return None

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """``Expect: 100-continue``: refuse before the body is sent, or let it come."""
        refusal = self.gate(request)
        if refusal is not None:
            return self.refused(request, refusal)
        if request.version != HttpVersion11 or request.headers.get("Expect", "").lower() != "100-continue":
            raise web.HTTPExpectationFailed(text="only Expect: 100-continue is understood")
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0
        return None

    def refused(self, request: web.Request, response: web.Response) -> web.Response:
        self.deps.metrics.stow_requests.labels(status=str(response.status)).inc()
        log.warning(
            "STOW-RS request from %s refused before its body: %d %s",
            request.remote,
            response.status,
            (response.text or "").strip(),
        )
        return response

    # --- the request ---

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        refusal = self.gate(request)
        if refusal is not None:
            return self.refused(request, refusal)
        media_type = choose_media_type(request.headers.get("Accept"))
        assert media_type is not None
        peer = request.transport.get_extra_info("peername") if request.transport else None
        reception = HttpReception(
            calling_ae=self.config.calling_ae,
            called_ae=self.config.called_ae,
            peer_address=f"{peer[0]}:{peer[1]}" if peer else "?",
            study_uid=request.match_info.get("study"),
            request_uid=request_uid(),
        )
        try:
            outcomes, broken = await self.read_parts(request, reception)
        except _TooLarge:
            response = _plain(413, f"the body is limited to {self.config.max_request_bytes} bytes")
            self.count(response.status, [], reception, started, request)
            return response
        if not outcomes:
            response = _plain(400, f"no instance in the body ({broken or 'no parts'})")
            self.count(response.status, [], reception, started, request)
            return response
        status = response_status(outcomes)
        if status == 200 and self.config.boundary:
            args = (self.deps, reception, outcomes, self.config.boundary_max_uids)
            records = await self.deps.run_blocking(add_boundaries, *args)
            log.info("STOW-RS %s: %d study boundary record(s)", reception.request_uid, records)
        body = render(response_dataset(outcomes), media_type)
        response = web.Response(status=status, body=body, content_type=media_type)
        if broken:
            response.force_close()
        self.count(status, outcomes, reception, started, request)
        return response

    async def read_parts(self, request: web.Request, reception: HttpReception) -> tuple[list[PartOutcome], str | None]:
        """Every part's outcome, and what broke the body off (None: read to its end)."""
        outcomes: list[PartOutcome] = []
        try:
            reader = MultipartReader(request.headers, request.content)
            while (part := await self.timed(reader.next(), request)) is not None:
                if isinstance(part, MultipartReader):
                    outcomes.append(PartOutcome(failure=REFUSAL_STATUS["not_dicom"], reason="not_dicom"))
                    return outcomes, "a nested multipart part"
                outcomes.append(await self.receive_part(part, request, reception))
        except BODY_ERRORS as exc:
            if outcomes:  # the parts before stay stored; the sender learns that the rest was not
                outcomes.append(PartOutcome(failure=REFUSAL_STATUS["malformed_request"], reason="malformed_request"))
            log.warning("STOW-RS %s: body broken off: %s", reception.request_uid, type(exc).__name__)
            return outcomes, type(exc).__name__
        return outcomes, None

    async def timed(self, step: Any, request: web.Request) -> Any:
        """One read of the body, within the network timeout and the body's size limit."""
        result = await asyncio.wait_for(step, self.config.timeout)
        if request.content.total_bytes > self.config.max_request_bytes:
            raise _TooLarge
        return result

    async def receive_part(self, part: BodyPartReader, request: web.Request, reception: HttpReception) -> PartOutcome:
        """Stream one part to a staged file and store it; a part that is no instance is read and dropped."""
        problem = part_problem(part.headers)
        if problem is not None:
            while await self.timed(part.read_chunk(CHUNK_BYTES), request):
                pass
            log.warning("STOW-RS %s: %s not stored", reception.request_uid, problem)
            return PartOutcome(failure=REFUSAL_STATUS["not_dicom"], reason="not_dicom")
        staged = StagedInstance(self.deps.store, "", "", "", self.deps.limits, with_file_meta=False)
        try:
            head = b""
            while len(head) < PREAMBLE_BYTES + 4 and (chunk := await self.timed(part.read_chunk(CHUNK_BYTES), request)):
                head += chunk
            staged.write(with_preamble(head))
            while chunk := await self.timed(part.read_chunk(CHUNK_BYTES), request):
                staged.write(chunk)
        except BaseException:
            staged.discard()
            raise
        return await self.deps.run_blocking(store_part, self.deps, staged, reception)

    def count(
        self,
        status: int,
        outcomes: list[PartOutcome],
        reception: HttpReception,
        started: float,
        request: web.Request,
    ) -> None:
        """Metrics and the request's one log line (UIDs, counts and timings; never patient data)."""
        metrics = self.deps.metrics
        took = time.perf_counter() - started
        metrics.stow_requests.labels(status=str(status)).inc()
        metrics.stow_seconds.observe(took)
        reasons = Counter(outcome.reason for outcome in outcomes)
        for reason, number in reasons.items():
            metrics.stow_instances.labels(outcome=reason).inc(number)
        stored = reasons.pop("stored", 0)
        studies = sorted({outcome.study_uid for outcome in outcomes if outcome.stored})
        log.info(
            "STOW-RS %s from %s: %d, %d stored, %d failed%s, %d bytes in %.2f s, studies %s",
            reception.request_uid, reception.peer_address, status, stored, sum(reasons.values()),
            f" ({', '.join(f'{r}: {n}' for r, n in sorted(reasons.items()))})" if reasons else "",
            request.content.total_bytes, took, ",".join(studies[:8]) + ("..." if len(studies) > 8 else ""),
            extra={"request_uid": reception.request_uid, "peer": reception.peer_address, "status": status,
                   "stored": stored, "failed": sum(reasons.values()), "bytes": request.content.total_bytes,
                   "duration_ms": round(took * 1000)},
        )  # fmt: skip


async def start_dicomweb(
    deps: Any, settings: Any, ae_title: str, host: str, port: int, ssl_context: ssl.SSLContext | None
) -> web.AppRunner | None:
    """Serve STOW-RS on ``host:port`` (SO_REUSEPORT: every receiving process may); None when it stays off."""
    config = stow_config(settings, ae_title)
    if config is None:
        return None
    runner = web.AppRunner(
        StowService(deps, config).app(),
        handle_signals=False,
        access_log=None,
        shutdown_timeout=settings.receiver_acse_timeout,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_port=True)
    await site.start()
    auth = "bearer token" if config.token else "TLS client certificate"
    log.info(
        "DICOMweb STOW-RS on %s://%s:%d/dicomweb/studies (%s; calling AE %s%s)",
        "https" if ssl_context else "http",
        host,
        port,
        auth,
        config.calling_ae,
        "; one request is a study boundary" if config.boundary else "",
    )
    return runner
