"""The web view of one `studystream worker`: JSON API, HTML pages, authentication, dead letters, a real browser."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from app.settings import Settings
from tests.aggregator.conftest import Worker, produce_raw
from tests.conftest import unique_uid, wait_for
from tests.web.conftest import ARTIFACTS, WebCluster, study_events, wait_listed

PROTECTED = ["/", "/api/studies", "/api/studies/1.2.3", "/studies/1.2.3", "/api/dlq", "/metrics"]
PUBLISH_TIMEOUT = 90.0
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def test_study_is_listed_with_counts_and_detail_but_no_patient_data(one_worker: tuple[WebCluster, Worker]) -> None:
    cluster, worker = one_worker
    uid = unique_uid()
    cluster.produce(study_events(uid, series=2, per_series=3))

    listing = wait_listed(cluster, worker, {uid}, instance_count=6)
    row = next(r for r in listing["studies"] if r["study_uid"] == uid)
    assert (row["series_count"], row["instance_count"], row["revision"]) == (2, 6, 1)
    assert row["modalities"] == ["CT"]
    assert row["accession_number"] == "ACC" + uid[-6:]
    assert row["first_received"] and row["last_received"] and row["age_seconds"] >= 0
    assert row["patient"] is None

    detail = cluster.json(worker, f"/api/studies/{uid}")
    assert [s["instance_count"] for s in detail["series"]] == [3, 3]
    assert sorted(i["sop_instance_uid"] for i in detail["instances"]) == sorted(
        f"{uid}.{s}.{n}" for s in (1, 2) for n in (1, 2, 3)
    )
    assert detail["worker"] == f"http://localhost:{worker.web_port}"

    pages = [cluster.get(worker, p) for p in (f"/api/studies/{uid}", "/api/studies", "/", f"/studies/{uid}")]
    assert all(p.status_code == 200 for p in pages)
    assert uid in pages[2].text and uid in pages[3].text
    for page in pages:  # the synthetic patient's name and identifier appear nowhere
        assert "Test^Patient" not in page.text and "PID" + uid[-6:] not in page.text


def test_study_becomes_published_with_a_link_to_its_imaging_study(
    one_worker: tuple[WebCluster, Worker], fhir: Settings
) -> None:
    cluster, worker = one_worker
    uid = unique_uid()
    cluster.produce(study_events(uid, series=1, per_series=2))

    listing = wait_listed(cluster, worker, {uid}, status="published", timeout=PUBLISH_TIMEOUT)
    row = next(r for r in listing["studies"] if r["study_uid"] == uid)
    assert row["fhir"]["status"] == "published" and row["fhir"]["published_revision"] == 1
    assert row["fhir"]["url"].startswith(f"{fhir.fhir_base_url}/ImagingStudy/")
    resource = httpx.get(row["fhir"]["url"], timeout=30).json()
    assert resource["resourceType"] == "ImagingStudy"
    assert any(i["system"] == "urn:dicom:uid" and i["value"] == f"urn:oid:{uid}" for i in resource["identifier"])

    published = cluster.json(worker, "/api/studies?status=published")["studies"]
    receiving = cluster.json(worker, "/api/studies?status=receiving")["studies"]
    assert uid in {r["study_uid"] for r in published} and uid not in {r["study_uid"] for r in receiving}
    metrics = cluster.get(worker, "/metrics").text
    assert 'studystream_web_studies{status="published"}' in metrics
    assert "studystream_uploader_revisions_total" in metrics


@pytest.mark.parametrize("path", PROTECTED)
def test_protected_pages_require_the_token_or_basic_credentials(
    one_worker: tuple[WebCluster, Worker], path: str
) -> None:
    cluster, worker = one_worker
    wrong_basic = {"Authorization": cluster.auth.basic["Authorization"][:-4] + "AAAA"}
    for headers in ({}, {"Authorization": "Bearer wrong-token"}, wrong_basic, {"Authorization": "Basic !!"}):
        response = cluster.get(worker, path, headers=headers)
        assert response.status_code == 401, (path, headers, response.status_code)
        assert response.headers["WWW-Authenticate"].startswith("Basic")
    for headers in (cluster.auth.bearer, cluster.auth.basic):
        assert cluster.get(worker, path, headers=headers).status_code in (200, 404)


def test_faust_pages_that_would_bypass_auth_are_not_served(one_worker: tuple[WebCluster, Worker]) -> None:
    cluster, worker = one_worker
    for path in ("/router/", "/table/study-headers/", "/graph/", "/stats/"):
        assert cluster.get(worker, path, headers={}).status_code in (401, 404), path


def test_health_is_open(one_worker: tuple[WebCluster, Worker]) -> None:
    cluster, worker = one_worker
    response = cluster.get(worker, "/health", headers={})
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_dead_letters_are_listed_with_their_reason(one_worker: tuple[WebCluster, Worker]) -> None:
    cluster, worker = one_worker
    uid = unique_uid()
    produce_raw(cluster.settings, [(uid.encode(), b"{not json")])

    def dead_letter() -> dict | None:
        rows = cluster.json(worker, "/api/dlq")["dead_letters"]
        return next((r for r in rows if r["study_uid"] == uid), None)

    row = wait_for(dead_letter, 30, interval=0.5, what="the dead letter in /api/dlq")
    assert (row["stage"], row["reason"]) == ("aggregator", "not_json")
    assert row["message"].startswith("instance event: not JSON")
    assert row["source"].startswith(f"{cluster.settings.topic_raw}[") and row["value_bytes"] == len(b"{not json")


def test_browser_sees_a_study_go_from_receiving_to_published(
    one_worker: tuple[WebCluster, Worker], fhir: Settings
) -> None:
    from playwright.sync_api import expect, sync_playwright

    cluster, worker = one_worker
    uid = unique_uid()
    events = study_events(uid, series=1, per_series=8)

    def drip() -> None:  # an instance every ~0.4 s keeps the study receiving for a few page refreshes
        for event in events:
            cluster.produce([event])
            time.sleep(0.4)

    sender = threading.Thread(target=drip, daemon=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(
                http_credentials={"username": cluster.auth.user, "password": cluster.auth.password},
                viewport={"width": 1600, "height": 900},
            )
            page = context.new_page()
            page.goto(cluster.url(worker, "/"))
            expect(page.locator("h1")).to_have_text("StudyStream studies")
            sender.start()
            row = page.locator(f'tr[data-study-uid="{uid}"]')
            expect(row.locator('[data-status="receiving"]')).to_be_visible(timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "dashboard-receiving.png"), full_page=True)
            expect(row.locator('[data-status="published"]')).to_be_visible(timeout=PUBLISH_TIMEOUT * 1000)
            expect(row.locator("td").nth(4)).to_have_text("8")
            page.screenshot(path=str(ARTIFACTS / "dashboard-published.png"), full_page=True)

            page.goto(cluster.url(worker, f"/studies/{uid}"))
            expect(page.locator("#instances tbody tr")).to_have_count(8)
            page.screenshot(path=str(ARTIFACTS / "study-detail.png"), full_page=True)
        finally:
            browser.close()
            sender.join(timeout=10)
    print(f"screenshots: {ARTIFACTS}")
