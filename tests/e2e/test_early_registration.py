"""Early registration end to end: a study still receiving appears on HAPI as ``registered`` seconds after
its first instance, and the same ImagingStudy turns ``available`` with every instance when complete."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from scu import synth
from tests.conftest import wait_for
from tests.e2e.conftest import E2E, studies_in

EARLY = {"workers": 1, "quiet_period": 8.0, "fhir_early_registration": True, "fhir_early_registration_delay": 0.5}


@pytest.mark.parametrize("e2e", [EARLY], indirect=True)
def test_a_study_is_registered_while_receiving_and_becomes_available_in_place(e2e: E2E, tmp_path: Path) -> None:
    files = synth.write_studies(tmp_path / "in", studies=1, series=1, instances=4)
    (study,) = studies_in(files).values()
    e2e.remember({study.uid: study})
    assert e2e.send(*files[:2], name="first-half")["stored"] == 2

    def registered() -> dict[str, Any] | None:
        found = e2e.fhir.studies(study.uid)
        return found[0] if found and found[0]["status"] == "registered" else None

    early = wait_for(registered, 60, interval=0.3, what="the ImagingStudy registered before the quiet period")
    assert 1 <= early["numberOfInstances"] <= 2
    assert e2e.send(*files[2:], name="second-half")["stored"] == 2

    final = e2e.wait_study(study, timeout=90)  # every instance listed
    assert final["status"] == "available"
    assert final["id"] == early["id"], "the complete study must replace the registration, not sit beside it"
    assert len(e2e.fhir.studies(study.uid)) == 1
    logs = "".join(p.read_text(errors="replace") for p in e2e.log_files() if p.suffix == ".log")
    assert f"study {study.uid} registered early" in logs and f"study {study.uid} revision 1 registered" in logs
    e2e.assert_no_phi_in_logs()
