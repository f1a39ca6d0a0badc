"""Modality Performed Procedure Step at the real receiver, pynetdicom as the modality: statuses, durability across
a restart, and the performed_procedure_step records on imaging.raw."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import ModalityPerformedProcedureStep  # type: ignore[attr-defined]

from app.settings import Settings
from tests.conftest import unique_uid
from tests.domain.test_mpps import completed_dataset, create_dataset, discontinued_dataset
from tests.scp.conftest import read_events


@contextmanager
def modality(port: int) -> Iterator[Association]:
    ae = AE(ae_title="MODALITY1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", port, ae_title="STUDYSTREAM")
    assert assoc.is_established
    try:
        yield assoc
    finally:
        assoc.release()


def n_create(assoc: Association, ds: Dataset, uid: str | None) -> Dataset:
    status, _ = assoc.send_n_create(ds, ModalityPerformedProcedureStep, uid)
    return status


def n_set(assoc: Association, ds: Dataset, uid: str) -> Dataset:
    status, _ = assoc.send_n_set(ds, ModalityPerformedProcedureStep, uid)
    return status


def test_a_modality_s_steps_get_their_statuses_survive_a_restart_and_end_as_records(
    receiver_factory, kafka: Settings
) -> None:
    receiver = receiver_factory().start()
    study, done, stopped = unique_uid(), unique_uid(), unique_uid()
    sops = [f"{study}.1.{n}" for n in (1, 2, 3)]

    with modality(receiver.port) as assoc:
        assert n_create(assoc, create_dataset(study), done).Status == 0x0000
        assert n_create(assoc, create_dataset(study), done).Status == 0x0111  # duplicate SOP instance
        generated = n_create(assoc, create_dataset(study), None)
        assert generated.Status == 0x0000
        assert n_create(assoc, create_dataset(study, Modality=None), unique_uid()).Status == 0x0120
        assert n_create(assoc, create_dataset(study), stopped).Status == 0x0000
        assert n_set(assoc, discontinued_dataset(), unique_uid()).Status == 0x0112  # no such object instance
        assert n_set(assoc, completed_dataset(*sops), done).Status == 0x0000
        refused = n_set(assoc, discontinued_dataset(), done)
        assert (refused.Status, refused.ErrorID) == (0x0110, 0xA710)
        assert refused.ErrorComment == "Performed Procedure Step Object may no longer be updated"

    metrics = receiver.metrics()
    assert 'studystream_receiver_mpps_requests_total{operation="N-CREATE",status="0x0000"} 3.0' in metrics
    assert 'studystream_receiver_mpps_requests_total{operation="N-SET",status="0x0110"} 1.0' in metrics
    assert 'studystream_receiver_mpps_steps_ended_total{status="COMPLETED"} 1.0' in metrics
    assert receiver.stop() == 0
    with sqlite3.connect(receiver.root / "state" / "receiver-mpps.sqlite") as db:
        kept = {uid for (uid,) in db.execute("SELECT uid FROM steps")}
    made_up = kept - {done, stopped}
    assert len(kept) == 3 and len(made_up) == 1 and made_up.pop().startswith("2.25.")  # the N-CREATE without UID
    receiver.start()
    with modality(receiver.port) as assoc:
        assert n_set(assoc, completed_dataset(*sops), done).Status == 0x0110  # still final after the restart
        assert n_set(assoc, discontinued_dataset(), stopped).Status == 0x0000  # still IN PROGRESS: accepted

    records = [(key, value) for key, value in read_events(kafka, receiver.topic, expected=2)]
    assert [key for key, _ in records] == [study.encode(), study.encode()]
    completed, discontinued = (value for _, value in records)
    assert completed["record_type"] == "performed_procedure_step"
    assert (completed["mpps_uid"], completed["status"], completed["sop_instance_uids"]) == (done, "COMPLETED", sops)
    assert (discontinued["mpps_uid"], discontinued["status"]) == (stopped, "DISCONTINUED")
    assert (discontinued["reason_code"], discontinued["reason_meaning"]) == (
        "110514",
        "Incorrect worklist entry selected",
    )
    assert completed["calling_ae"] == "MODALITY1"
    log = receiver.log()
    assert "Doe" not in log and "MPPS N-SET" in log and "status 0x0110" in log
