"""The FHIR server seen from the uploader: an ``httpx.AsyncClient`` with the configured authentication.

Auth (``fhir_auth``): ``none``; ``bearer`` (a static token); ``basic``; ``smart`` — SMART Backend
Services: a client-credentials access token obtained with a signed JWT client assertion
(RS384/ES384, ``private_key_jwt``), cached until shortly before it expires and fetched again after a 401.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt

from app.settings import Settings
from domain.errors import ConfigurationError
from domain.fhir_mapping import MappingOptions, StoredStudy, stored_mapping_version, stored_revision, study_search_query

FHIR_JSON = "application/fhir+json"
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = 300  # seconds; SMART: "no more than five minutes in the future"
TOKEN_EXPIRY_MARGIN = 30.0  # seconds: refresh a token this long before it expires


class FhirHttpError(Exception):
    """A non-2xx answer of the FHIR server to a lookup (transactions return their response instead)."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


def client_assertion(
    client_id: str, token_url: str, private_key_pem: bytes, algorithm: str, key_id: str, now: float, jti: str
) -> str:
    """The signed JWT a SMART backend client presents to the token endpoint (iss = sub = client id)."""
    claims = {"iss": client_id, "sub": client_id, "aud": token_url, "exp": int(now) + ASSERTION_LIFETIME, "jti": jti}
    headers = {"kid": key_id, "typ": "JWT"} if key_id else {"typ": "JWT"}
    return jwt.encode(claims, private_key_pem, algorithm=algorithm, headers=headers)


@dataclass
class _Token:
    value: str
    expires_at: float


class SmartBackendAuth:
    """Fetches and caches a SMART Backend Services access token."""

    def __init__(self, settings: Settings) -> None:
        missing = [
            name
            for name in ("fhir_smart_token_url", "fhir_smart_client_id", "fhir_smart_private_key")
            if not getattr(settings, name)
        ]
        if missing:
            raise ConfigurationError(f"fhir_auth=smart needs {', '.join(missing)}")
        self.settings = settings
        self.key_pem = Path(str(settings.fhir_smart_private_key)).read_bytes()
        self._token: _Token | None = None

    def invalidate(self) -> None:
        self._token = None

    async def header(self, http: httpx.AsyncClient) -> str:
        now = time.time()
        if self._token is None or self._token.expires_at - TOKEN_EXPIRY_MARGIN <= now:
            self._token = await self._fetch(http, now)
        return f"Bearer {self._token.value}"

    async def _fetch(self, http: httpx.AsyncClient, now: float) -> _Token:
        s = self.settings
        assertion = client_assertion(
            s.fhir_smart_client_id,
            s.fhir_smart_token_url,
            self.key_pem,
            s.fhir_smart_algorithm,
            s.fhir_smart_key_id,
            now,
            str(uuid.uuid4()),
        )
        response = await http.post(
            s.fhir_smart_token_url,
            data={
                "grant_type": "client_credentials",
                "scope": s.fhir_smart_scopes,
                "client_assertion_type": CLIENT_ASSERTION_TYPE,
                "client_assertion": assertion,
            },
            headers={"Accept": "application/json"},
        )
        if response.status_code != 200:
            raise FhirHttpError(response)
        body = response.json()
        return _Token(str(body["access_token"]), now + float(body.get("expires_in", 300)))


class FhirClient:
    """The few FHIR interactions the uploader needs; every call may raise ``httpx.TransportError``."""

    def __init__(self, settings: Settings, options: MappingOptions, transport: httpx.AsyncBaseTransport | None = None):
        self.settings = settings
        self.options = options
        self.base_url = settings.fhir_base_url
        auth: httpx.Auth | None = None
        self.smart: SmartBackendAuth | None = None
        headers = {"Accept": FHIR_JSON, "Content-Type": FHIR_JSON}
        if settings.fhir_auth == "bearer":
            if settings.fhir_token is None:
                raise ConfigurationError("fhir_auth=bearer needs fhir_token")
            headers["Authorization"] = f"Bearer {settings.fhir_token.get_secret_value()}"
        elif settings.fhir_auth == "basic":
            if not settings.fhir_username or settings.fhir_password is None:
                raise ConfigurationError("fhir_auth=basic needs fhir_username and fhir_password")
            auth = httpx.BasicAuth(settings.fhir_username, settings.fhir_password.get_secret_value())
        elif settings.fhir_auth == "smart":
            self.smart = SmartBackendAuth(settings)
        self.http = httpx.AsyncClient(
            base_url=self.base_url + "/",
            headers=headers,
            auth=auth,
            timeout=settings.fhir_timeout,
            transport=transport,
        )

    async def close(self) -> None:
        await self.http.aclose()

    def absolute(self, location: str) -> str:
        return location if "://" in location else f"{self.base_url}/{location}"

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        for attempt in (1, 2):
            headers = dict(kwargs.pop("headers", {}))
            if self.smart is not None:
                headers["Authorization"] = await self.smart.header(self.http)
            response = await self.http.request(method, url, headers=headers, **kwargs)
            if response.status_code == 401 and self.smart is not None and attempt == 1:
                self.smart.invalidate()  # the token may have been revoked or expired early
                kwargs["headers"] = headers
                continue
            return response
        return response

    async def find_study(self, study_uid: str) -> StoredStudy | None:
        """The ImagingStudy stored for a study UID (id, version, StudyStream revision), if any."""
        # no-cache: HAPI serves a repeated search from its result cache (60 s by default), which would
        # hide a revision written moments ago and let an older one overwrite it.
        response = await self._request(
            "GET", f"ImagingStudy?{study_search_query(study_uid)}&_elements=meta", headers={"Cache-Control": "no-cache"}
        )
        if response.status_code != 200:
            raise FhirHttpError(response)
        entries = [e.get("resource") or {} for e in response.json().get("entry") or ()]
        studies = [r for r in entries if r.get("resourceType") == "ImagingStudy"]
        if not studies:
            return None
        # Two would be a duplicate created outside StudyStream: the highest revision is the one to keep.
        best = max(studies, key=lambda r: stored_revision(r, self.options))
        return StoredStudy(
            id=str(best["id"]),
            version=(best.get("meta") or {}).get("versionId"),
            revision=stored_revision(best, self.options),
            mapping_version=stored_mapping_version(best),
        )

    async def transaction(self, bundle_json: bytes) -> httpx.Response:
        return await self._request("POST", "", content=bundle_json)
