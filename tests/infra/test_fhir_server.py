"""The real HAPI FHIR server: fhirclient create/read, conditional create in a transaction, $validate."""

from __future__ import annotations

import httpx
from fhirclient import client
from fhirclient.models.bundle import Bundle, BundleEntry, BundleEntryRequest
from fhirclient.models.humanname import HumanName
from fhirclient.models.identifier import Identifier
from fhirclient.models.patient import Patient

from app.settings import Settings

SYSTEM = "urn:oid:1.2.826.0.1.3680043.10.1404.99"


def _server(settings: Settings) -> client.FHIRClient:
    return client.FHIRClient(settings={"app_id": "studystream-tests", "api_base": settings.fhir_base_url + "/"})


def _patient(identifier: str) -> Patient:
    patient = Patient()
    patient.identifier = [Identifier({"system": SYSTEM, "value": identifier})]
    patient.name = [HumanName({"family": "Test", "given": ["Foundation"]})]
    patient.gender = "other"
    patient.birthDate = None
    return patient


def test_create_and_read_a_patient_through_fhirclient(fhir: Settings, unique: str) -> None:
    smart = _server(fhir)
    created = _patient(f"create-{unique}").create(smart.server)
    assert created is not None and created["resourceType"] == "Patient"
    read = Patient.read(created["id"], smart.server)
    assert read.identifier[0].value == f"create-{unique}"
    assert read.name[0].family == "Test"


def test_conditional_create_in_a_transaction_twice_yields_one_patient(fhir: Settings, unique: str) -> None:
    identifier = f"conditional-{unique}"
    entry = BundleEntry()
    entry.fullUrl = "urn:uuid:5f0c7e3e-6d1f-4e38-9d55-1f1c3b0f6a01"
    entry.resource = _patient(identifier)
    entry.request = BundleEntryRequest(
        {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={SYSTEM}|{identifier}"}
    )
    bundle = Bundle({"type": "transaction"})
    bundle.entry = [entry]

    smart = _server(fhir)
    statuses = []
    for _ in range(2):
        response = smart.server.post_json("", bundle.as_json())
        assert response.status_code == 200, response.text
        statuses.append(response.json()["entry"][0]["response"]["status"])
    assert statuses[0].startswith("201") and statuses[1].startswith("200")

    search = httpx.get(
        f"{fhir.fhir_base_url}/Patient", params={"identifier": f"{SYSTEM}|{identifier}"}, timeout=fhir.fhir_timeout
    )
    assert search.status_code == 200
    assert search.json()["total"] == 1


def test_validate_operation_reports_an_invalid_resource(fhir: Settings) -> None:
    # Parses, but lacks Observation.status and .code, which R4 requires: $validate must say so.
    invalid = {"resourceType": "Observation"}
    response = httpx.post(
        f"{fhir.fhir_base_url}/Observation/$validate",
        json=invalid,
        headers={"Content-Type": "application/fhir+json"},
        timeout=fhir.fhir_timeout,
    )
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    errors = [issue for issue in outcome["issue"] if issue["severity"] in ("error", "fatal")]
    assert any("Observation.status" in str(issue) for issue in errors), errors
