"""DICOMweb STOW-RS as a study boundary, end to end: dicomweb-client → the receiver's STOW-RS front door →
imaging.raw → a worker → HAPI, the study on FHIR long before its 300 s quiet period."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread

from scu import synth
from tests.conftest import free_port
from tests.e2e.conftest import E2E, phi_hits, phi_terms, studies_in
from tests.scp.conftest import Receiver

TOKEN = "stow-e2e-token"  # a test value, not a secret


@pytest.mark.parametrize("e2e", [{"workers": 1, "quiet_period": 300.0}], indirect=True)
def test_one_stow_request_puts_the_study_on_fhir_without_waiting_for_the_quiet_period(e2e: E2E, tmp_path: Path) -> None:
    files = synth.write_studies(tmp_path / "in", studies=1, series=2, instances=3)
    (study,) = studies_in(files).values()
    e2e.remember({study.uid: study})
    port = free_port()
    stow = Receiver(root=tmp_path / "stow-receiver", topic=e2e.settings.topic_raw, broker_url=e2e.settings.broker_url)
    stow.root.mkdir(parents=True)
    stow.start(
        STUDYSTREAM_RECEIVER_DICOMWEB_PORT=str(port),
        STUDYSTREAM_RECEIVER_DICOMWEB_TOKEN=TOKEN,
        STUDYSTREAM_RECEIVER_STOW_IS_STUDY_BOUNDARY="true",
    )
    try:
        started = time.monotonic()
        client = DICOMwebClient(url=f"http://127.0.0.1:{port}/dicomweb", headers={"Authorization": f"Bearer {TOKEN}"})
        answer = client.store_instances([dcmread(path) for path in files], study_instance_uid=study.uid)
        assert len(answer.ReferencedSOPSequence) == len(files) and "FailedSOPSequence" not in answer

        resource = e2e.wait_study(study, timeout=120)  # the ImagingStudy with every instance
        elapsed = time.monotonic() - started
        print(f"\nSTOW-RS boundary: {len(files)} instances, ImagingStudy readable after {elapsed:.1f} s")
        assert elapsed < 120, "the 300 s quiet period decided, not the STOW-RS boundary"
        assert resource["status"] == "available" and resource["numberOfInstances"] == len(files)
        assert not phi_hits([stow.log_path], phi_terms(study.headers))
    finally:
        stow.stop()
