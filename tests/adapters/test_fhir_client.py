"""The FHIR client's authentication (bearer, basic, SMART backend services) against a mock transport."""

from __future__ import annotations

from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from adapters.fhir_http import FhirAuthError, FhirClient, client_assertion
from app.settings import Settings
from domain.fhir_mapping import MappingOptions

# --- Authentication ------------------------------------------------------------------------------


def _capture(seen: list[httpx.Request]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/token"):
            return httpx.Response(200, json={"access_token": f"tok-{len(seen)}", "expires_in": 300})
        if request.headers.get("Authorization") == "Bearer tok-1" and len(seen) < 3:
            return httpx.Response(401)  # first token revoked: the client must fetch a new one
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset"})

    return httpx.MockTransport(handler)


async def test_bearer_and_basic_auth_headers() -> None:
    seen: list[httpx.Request] = []
    for auth in (
        Settings(fhir_auth="bearer", fhir_token="abc"),
        Settings(fhir_auth="basic", fhir_username="u", fhir_password="p"),
    ):
        client = FhirClient(auth, MappingOptions(), transport=_capture(seen))
        assert await client.find_study("1.2.3") is None
        await client.close()
    assert seen[0].headers["Authorization"] == "Bearer abc"
    assert seen[1].headers["Authorization"].startswith("Basic ")


async def test_smart_backend_services_token_with_signed_assertion(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / "key.pem").write_bytes(pem)
    settings = Settings(
        fhir_auth="smart",
        fhir_base_url="https://fhir.example.org/r4",
        fhir_smart_token_url="https://auth.example.org/token",
        fhir_smart_client_id="studystream",
        fhir_smart_private_key=tmp_path / "key.pem",
        fhir_smart_key_id="k1",
    )
    seen: list[httpx.Request] = []
    client = FhirClient(settings, MappingOptions(), transport=_capture(seen))
    assert await client.find_study("1.2.3") is None
    await client.close()

    token_request, rejected, second_token, accepted = seen
    form = dict(httpx.QueryParams(token_request.content.decode()))
    assert form["grant_type"] == "client_credentials"
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    claims = jwt.decode(
        form["client_assertion"], key.public_key(), algorithms=["RS384"], audience="https://auth.example.org/token"
    )
    assert claims["iss"] == claims["sub"] == "studystream"
    assert jwt.get_unverified_header(form["client_assertion"])["kid"] == "k1"
    assert rejected.headers["Authorization"] == "Bearer tok-1"
    assert second_token.url.path == "/token"
    assert accepted.headers["Authorization"] == "Bearer tok-3"


def test_client_assertion_expires_within_five_minutes() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    token = client_assertion("c", "https://a/token", pem, "RS384", "", now=1000.0, jti="j")
    claims = jwt.decode(
        token, key.public_key(), algorithms=["RS384"], audience="https://a/token", options={"verify_exp": False}
    )
    assert claims["exp"] - 1000 <= 300 and claims["jti"] == "j"


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, {"token_type": "bearer"}),  # no access_token
        (400, {"error": "invalid_client", "error_description": "client PID-123 unknown"}),
        (503, "<html>down</html>"),
    ],
)
async def test_a_token_endpoint_without_a_token_is_an_auth_outage_whose_message_names_no_description(
    tmp_path: Path, status: int, body: object
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / "key.pem").write_bytes(pem)
    settings = Settings(
        fhir_auth="smart",
        fhir_smart_token_url="https://auth.example.org/token",
        fhir_smart_client_id="studystream",
        fhir_smart_private_key=tmp_path / "key.pem",
    )

    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(status, text=body)
        return httpx.Response(status, json=body)

    client = FhirClient(settings, MappingOptions(), transport=httpx.MockTransport(handler))
    with pytest.raises(FhirAuthError) as raised:
        await client.find_study("1.2.3")
    await client.close()
    assert f"HTTP {status}" in str(raised.value) and "PID-123" not in str(raised.value)
