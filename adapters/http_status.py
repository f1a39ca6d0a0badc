"""The HTTP half of ``studystream status``: the FHIR server's ``metadata``, receivers' and workers' pages.

Each request is bounded by ``status_timeout`` (connect, read and the whole exchange) and by
``status_max_body_bytes``; bodies are returned as bytes for :mod:`domain.health_decode` to judge.
A failed request is named by its exception type only: its text may quote a URL or a header.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import orjson

from adapters.fhir_http import SmartBackendAuth
from app.settings import Settings
from domain.health import Reachability
from domain.health_decode import clean_text


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer (``status``, at most the body limit of ``body``), or why there was none (``error``)."""

    status: int = 0
    body: bytes = b""
    error: str = ""


def failure(exc: BaseException) -> str:
    return (
        "timed out"
        if isinstance(exc, TimeoutError | asyncio.TimeoutError | httpx.TimeoutException)
        else (type(exc).__name__)
    )


def without_credentials(url: str) -> str:
    """``url`` without user information, query or fragment: what may be printed."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


async def _read(response: httpx.Response, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            return b""  # too large: unreadable, not truncated into something that parses
        chunks.append(chunk)
    return b"".join(chunks)


async def get(
    http: httpx.AsyncClient, url: str, timeout: float, limit: int, headers: dict[str, str] | None = None
) -> Answer:
    """GET ``url``; never raises (a transport error, a timeout or a bad URL is an :class:`Answer` error)."""

    async def fetch() -> Answer:
        async with http.stream("GET", url, headers=headers or {}) as response:
            return Answer(response.status_code, await _read(response, limit))

    try:
        return await asyncio.wait_for(fetch(), timeout)
    except Exception as exc:  # noqa: BLE001 - whatever happened, that component did not answer
        return Answer(error=failure(exc))


def client(settings: Settings) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=settings.status_timeout, follow_redirects=False, trust_env=False)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def web_headers(settings: Settings) -> dict[str, str]:
    """The credentials the workers' web API accepts (web/auth.py): the token, else basic, else none."""
    if settings.web_token is not None:
        return {"Authorization": f"Bearer {settings.web_token.get_secret_value()}"}
    if settings.web_basic_user and settings.web_basic_password is not None:
        return {"Authorization": basic(settings.web_basic_user, settings.web_basic_password.get_secret_value())}
    return {}


async def _fhir_headers(settings: Settings, http: httpx.AsyncClient) -> dict[str, str]:
    headers = {"Accept": "application/fhir+json"}
    if settings.fhir_auth == "bearer" and settings.fhir_token is not None:
        headers["Authorization"] = f"Bearer {settings.fhir_token.get_secret_value()}"
    elif settings.fhir_auth == "basic" and settings.fhir_username and settings.fhir_password is not None:
        headers["Authorization"] = basic(settings.fhir_username, settings.fhir_password.get_secret_value())
    elif settings.fhir_auth == "smart":
        headers["Authorization"] = await SmartBackendAuth(settings).header(http)
    return headers


def _capability(body: bytes) -> str:
    """A few words on the CapabilityStatement (software and FHIR version), or "" when it is not one."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    if not isinstance(document, dict) or document.get("resourceType") != "CapabilityStatement":
        return ""
    software = document.get("software")
    name = clean_text(software.get("name"), 60) if isinstance(software, dict) else ""
    version = clean_text(software.get("version"), 20) if isinstance(software, dict) else ""
    fhir = clean_text(document.get("fhirVersion"), 20)
    return " ".join(part for part in (name, version, f"(FHIR {fhir})" if fhir else "") if part)


async def fhir_status(settings: Settings, http: httpx.AsyncClient) -> Reachability:
    """``GET [base]/metadata`` with the configured authentication: any 200 is up.

    ``_elements`` keeps HAPI's 1.5 MB CapabilityStatement to the software and FHIR version; a server
    that ignores it answers the whole statement, still up (its name then possibly unread).
    """
    target = without_credentials(settings.fhir_base_url)
    try:
        headers = await asyncio.wait_for(_fhir_headers(settings, http), settings.status_timeout)
    except Exception as exc:  # noqa: BLE001 - no token, no FHIR server
        return Reachability("fhir", target, False, f"authentication failed ({failure(exc)})")
    answer = await get(
        http,
        f"{settings.fhir_base_url}/metadata?_elements=software,fhirVersion",
        settings.status_timeout,
        settings.status_max_body_bytes,
        headers,
    )
    if answer.error:
        return Reachability("fhir", target, False, answer.error)
    if answer.status != 200:
        return Reachability("fhir", target, False, f"HTTP {answer.status}")
    return Reachability("fhir", target, True, _capability(answer.body) or "answered (not a CapabilityStatement)")
