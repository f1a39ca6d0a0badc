"""One upload attempt against a mock FHIR server: every answer (and every failure on the way) gets its verdict."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest

from adapters.fhir_http import FhirClient
from agents.fhir_writer import StudyWriter, UploaderMetrics
from agents.uploader import prune_bundles
from app.settings import Settings
from domain.fhir_mapping import MappingOptions
from domain.upload import Action, Verdict
from tests.factories import make_ready

SEARCHSET = {"resourceType": "Bundle", "type": "searchset"}
RESPONSE = {"resourceType": "Bundle", "entry": [{"response": {"location": "ImagingStudy/5/_history/1"}}]}


def writer(tmp_path: Path, post: Callable[[httpx.Request], httpx.Response], **overrides: object) -> StudyWriter:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json=SEARCHSET)
        return post(request)

    settings = Settings(
        bundles_dir=tmp_path / "bundles", uploader_backoff_initial=0.01, uploader_inline_budget=1.0, **overrides
    )  # type: ignore[arg-type]
    study_writer = StudyWriter(settings, UploaderMetrics(lambda: (0, 0.0)))
    study_writer.client = FhirClient(settings, MappingOptions(), transport=httpx.MockTransport(handler))
    return study_writer


@pytest.mark.parametrize(
    ("response", "verdict", "reason"),
    [
        (httpx.Response(200, json=RESPONSE), Verdict.SUCCESS, ""),
        (httpx.Response(200, text=""), Verdict.TRANSIENT, "2xx without a transaction-response"),
        (httpx.Response(503), Verdict.TRANSIENT, "HTTP 503"),
        (httpx.Response(429, headers={"Retry-After": "3"}), Verdict.TRANSIENT, "HTTP 429"),
        (httpx.Response(401), Verdict.TRANSIENT, "HTTP 401"),
        (
            httpx.Response(
                412,
                json={
                    "resourceType": "OperationOutcome",
                    "issue": [{"severity": "error", "code": "processing", "diagnostics": "HAPI-0958: PID-7 x2"}],
                },
            ),
            Verdict.CONFLICT,
            "HTTP 412 (error/processing HAPI-0958)",
        ),
        (httpx.Response(422, json={"resourceType": "OperationOutcome", "issue": []}), Verdict.REJECT, "HTTP 422"),
    ],
)
async def test_each_answer_of_the_server_gets_its_verdict(
    tmp_path: Path, response: httpx.Response, verdict: Verdict, reason: str
) -> None:
    attempt = await writer(tmp_path, lambda request: response).attempt(make_ready())
    assert attempt.verdict is verdict
    assert attempt.reason.startswith(reason)
    assert "PID-7" not in attempt.reason  # diagnostics stay in `detail`
    if verdict is Verdict.CONFLICT:
        assert "PID-7" in attempt.detail and orjson.loads(attempt.outcome)["resourceType"] == "OperationOutcome"


async def test_an_unreachable_server_is_transient(tmp_path: Path) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    attempt = await writer(tmp_path, refuse).attempt(make_ready())
    assert (attempt.verdict, attempt.reason) == (Verdict.TRANSIENT, "FHIR server unreachable: ConnectError")


async def test_a_bundle_that_cannot_be_saved_is_transient_and_nothing_is_posted(tmp_path: Path) -> None:
    posted: list[httpx.Request] = []
    (tmp_path / "bundles").write_text("a file where the directory should be")
    attempt = await writer(tmp_path, lambda r: posted.append(r) or httpx.Response(200, json=RESPONSE)).attempt(
        make_ready()
    )
    assert attempt.verdict is Verdict.TRANSIENT and attempt.reason.startswith("bundle not saved")
    assert posted == []


async def test_transient_failures_are_parked_after_the_inline_attempts_and_conflicts_dead_lettered_after_theirs(
    tmp_path: Path,
) -> None:
    attempt, counts, step = await writer(tmp_path, lambda r: httpx.Response(503)).upload(make_ready(), 0, 0)
    assert step.action is Action.PARK and 1 < counts.inline <= 3  # a 5xx marks the server down: park early
    conflict = httpx.Response(409)
    attempt, counts, step = await writer(tmp_path, lambda r: conflict, uploader_conflict_attempts=2).upload(
        make_ready(), 5, 1
    )
    assert (attempt.verdict, step.action, counts.conflicts, counts.total) == (
        Verdict.CONFLICT,
        Action.DEAD_LETTER,
        2,
        6,
    )


def test_bundles_past_their_retention_are_deleted(tmp_path: Path) -> None:
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    for path in (old, new):
        path.write_text("{}")
    import os

    os.utime(old, (time.time() - 10 * 86_400,) * 2)
    assert prune_bundles(tmp_path, time.time() - 86_400) == 1
    assert not old.exists() and new.exists()
    assert prune_bundles(tmp_path / "missing", time.time()) == 0
