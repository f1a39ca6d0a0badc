"""The FHIR server seen from the uploader: an ``httpx.AsyncClient`` with the configured authentication.

Auth (``fhir_auth``): ``none``; ``bearer`` (a static token); ``basic``; ``smart`` — SMART Backend
Services: a client-credentials access token obtained with a signed JWT client assertion
(RS384/ES384, ``private_key_jwt``), cached until shortly before it expires and fetched again after a 401.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson

from app.settings import Settings
from domain.errors import ConfigurationError, StudyStreamError
from domain.fhir_mapping import (
    MappingOptions,
    StoredPatient,
    StoredStudy,
    meta_delete_parameters,
    patient_search_query,
    stored_mapping_version,
    stored_revision,
    study_search_query,
    studystream_tags,
)

FHIR_JSON = "application/fhir+json"
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = 300  # seconds; SMART: "no more than five minutes in the future"
TOKEN_EXPIRY_MARGIN = 30.0  # seconds: refresh a token this long before it expires

# httpx logs every request's URL at INFO, and a Patient search's URL holds the patient's identifier.
logging.getLogger("httpx").setLevel(logging.WARNING)


def _version_id(resource: dict[str, Any]) -> str | None:
    meta = resource.get("meta")
    return str(meta["versionId"]) if isinstance(meta, dict) and meta.get("versionId") else None


class FhirHttpError(StudyStreamError):
    """A non-2xx answer of the FHIR server to a lookup (transactions return their response instead)."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


class FhirAuthError(StudyStreamError):
    """The SMART token endpoint did not give an access token: an outage of the credentials, not of the study.

    The message names the status and the OAuth error code only (RFC 6749 5.2), never the description.
    """


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
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise FhirAuthError(f"token endpoint answered HTTP {response.status_code} without a JSON object")
        token, lifetime = body.get("access_token"), body.get("expires_in", 300)
        if response.status_code != 200 or not isinstance(token, str) or not token:
            code = body.get("error") if isinstance(body.get("error"), str) else "no access_token"
            raise FhirAuthError(f"token endpoint answered HTTP {response.status_code}: {code[:64]}")
        try:
            expires_in = min(max(float(lifetime), 0.0), 86_400.0)
        except (TypeError, ValueError):
            expires_in = 300.0
        return _Token(token, now + expires_in)


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

    async def _search(self, resource_type: str, query: str) -> list[dict[str, Any]]:
        """The resources of ``resource_type`` (with an id) a search returns.

        ``no-cache``: HAPI serves a repeated search from its result cache (60 s by default), which would
        hide a revision written moments ago and let an older one overwrite it.
        """
        response = await self._request("GET", f"{resource_type}?{query}", headers={"Cache-Control": "no-cache"})
        if response.status_code != 200:
            raise FhirHttpError(response)
        try:
            body = response.json()
        except ValueError:
            raise FhirHttpError(response) from None
        entries = body.get("entry") if isinstance(body, dict) else None
        resources = (e.get("resource") for e in entries or () if isinstance(e, dict))
        return [r for r in resources if isinstance(r, dict) and r.get("resourceType") == resource_type and r.get("id")]

    async def find_study(self, study_uid: str) -> StoredStudy | None:
        """The ImagingStudy stored for a study UID (id, version, StudyStream revision), if any."""
        studies = await self._search("ImagingStudy", f"{study_search_query(study_uid)}&_elements=meta")
        if not studies:
            return None
        # Two would be a duplicate created outside StudyStream: the highest revision is the one to keep.
        best = max(studies, key=lambda r: stored_revision(r, self.options))
        return StoredStudy(
            id=str(best["id"]),
            version=_version_id(best),
            revision=stored_revision(best, self.options),
            mapping_version=stored_mapping_version(best),
            tags=studystream_tags(best, self.options),
        )

    async def find_patient(self, system: str, value: str) -> StoredPatient | None:
        """The Patient stored under an identifier; ``None`` when there is none, or more than one.

        Several Patients with one identifier (made outside StudyStream) are an ambiguity no rule can
        settle: the Bundle then creates the Patient conditionally, the server refuses that (412), and the
        study is dead-lettered as ``fhir_conflict`` instead of being filed under one of them.
        """
        patients = await self._search("Patient", patient_search_query(system, value))
        if len(patients) != 1:
            return None
        (found,) = patients
        return StoredPatient(id=str(found["id"]), version=_version_id(found), resource=found)

    async def delete_tags(self, resource_id: str, tags: list[dict[str, str]]) -> httpx.Response:
        """``$meta-delete`` of ``tags`` on an ImagingStudy (no new version of the resource)."""
        return await self._request(
            "POST", f"ImagingStudy/{resource_id}/$meta-delete", content=orjson.dumps(meta_delete_parameters(tags))
        )

    async def transaction(self, bundle_json: bytes) -> httpx.Response:
        return await self._request("POST", "", content=bundle_json)
