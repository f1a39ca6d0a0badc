"""The uploader's pure rules (domain.upload) and its HTTP client's authentication (with a mock transport)."""

from __future__ import annotations

from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from app.settings import Settings
from domain import upload as policy
from domain.fhir_mapping import MappingOptions
from infra.fhir_http import FhirClient, client_assertion


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, policy.Verdict.SUCCESS),
        (201, policy.Verdict.SUCCESS),
        (409, policy.Verdict.CONFLICT),
        (412, policy.Verdict.CONFLICT),
        (429, policy.Verdict.RETRY),
        (500, policy.Verdict.RETRY),
        (503, policy.Verdict.RETRY),
        (401, policy.Verdict.RETRY),
        (400, policy.Verdict.REJECT),
        (404, policy.Verdict.REJECT),
        (422, policy.Verdict.REJECT),
    ],
)
def test_classify_status(status: int, verdict: policy.Verdict) -> None:
    assert policy.classify_status(status) is verdict


def test_backoff_grows_exponentially_up_to_the_maximum_with_bounded_jitter() -> None:
    assert [policy.backoff_delay(n, 0.5, 10.0, 0.0, 0.3) for n in (1, 2, 3, 4, 5, 6)] == [0.5, 1, 2, 4, 8, 10]
    assert policy.backoff_delay(3, 0.5, 10.0, 0.5, 0.0) == 1.0  # -50 %
    assert policy.backoff_delay(3, 0.5, 10.0, 0.5, 0.999999) == pytest.approx(3.0, rel=1e-5)  # +50 %


def test_retry_after_header() -> None:
    assert policy.retry_after_seconds("7", 0.0) == 7.0
    assert policy.retry_after_seconds("Wed, 21 Oct 2015 07:28:10 GMT", 1445412480.0) == 10.0
    assert policy.retry_after_seconds("soon", 0.0) is None
    assert policy.retry_after_seconds(None, 0.0) is None


def test_operation_outcome_summaries_keep_diagnostics_out_of_the_loggable_form() -> None:
    body = (
        b'{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"processing","diagnostics":"PID-9"}]}'
    )
    outcome = policy.operation_outcome(body)
    assert policy.outcome_issue_codes(outcome) == "error/processing"
    assert policy.outcome_diagnostics(outcome) == "PID-9"
    assert policy.operation_outcome(b"<html>") is None


def test_study_location_from_a_transaction_response() -> None:
    response = {
        "entry": [
            {"response": {"location": "Patient/1/_history/1"}},
            {"response": {"location": "ImagingStudy/5/_history/2"}},
        ]
    }
    assert policy.study_location(response) == "ImagingStudy/5/_history/2"
    assert policy.without_history("ImagingStudy/5/_history/2") == "ImagingStudy/5"


def test_outcome_state_transitions_keep_the_published_revision() -> None:
    first = policy.published(None, "1.2", 1, "http://fhir/ImagingStudy/5", "t1")
    assert policy.is_superseded(first, 1) and not policy.is_superseded(first, 2)
    parked = policy.not_published(first, "1.2", 2, policy.UploadStatus.RETRYING, "HTTP 503", 503, 3, "t2", "t3")
    assert (parked.published_revision, parked.resource_url, parked.status) == (1, first.resource_url, "retrying")
    assert policy.decode_outcome(policy.encode_outcome(parked)) == parked
    later = policy.published(parked, "1.2", 2, "", "t4")
    assert (later.published_revision, later.resource_url) == (2, first.resource_url)


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
