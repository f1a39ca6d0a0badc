"""MPPS end to end: pynetdicom as the modality opens a Performed Procedure Step, storescu sends the study,
the step is set COMPLETED naming every instance, and the ImagingStudy is on HAPI long before its 300 s
quiet period."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep  # type: ignore[attr-defined]

from scu import synth
from tests.conftest import unique_uid
from tests.domain.test_mpps import completed_dataset, create_dataset
from tests.e2e.conftest import E2E, studies_in


def mpps_status(e2e: E2E, dataset: object, uid: str, create: bool) -> int:
    ae = AE(ae_title="MODALITY1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", e2e.receiver.port, ae_title=e2e.settings.ae_title)
    assert assoc.is_established
    try:
        send = assoc.send_n_create if create else assoc.send_n_set
        status, _ = send(dataset, ModalityPerformedProcedureStep, uid)
        return int(status.Status)
    finally:
        assoc.release()


@pytest.mark.parametrize("e2e", [{"workers": 1, "quiet_period": 300.0}], indirect=True)
def test_a_completed_step_puts_the_study_on_fhir_without_waiting_for_the_quiet_period(e2e: E2E, tmp_path: Path) -> None:
    files = synth.write_studies(tmp_path / "in", studies=1, series=1, instances=3)
    (study,) = studies_in(files).values()
    e2e.remember({study.uid: study})
    step = unique_uid()
    assert mpps_status(e2e, create_dataset(study.uid), step, create=True) == 0x0000
    assert e2e.send(*files)["stored"] == 3

    started = time.monotonic()
    assert mpps_status(e2e, completed_dataset(*sorted(study.instances)), step, create=False) == 0x0000
    resource = e2e.wait_study(study, timeout=120)
    elapsed = time.monotonic() - started
    assert elapsed < 120, "the 300 s quiet period decided, not the MPPS"
    assert resource["status"] == "available" and resource["numberOfInstances"] == 3
    e2e.assert_no_phi_in_logs()
