"""Modality Performed Procedure Step records through a real `studystream worker` on the real broker.

A 300 s quiet period: a study whose COMPLETED step names an instance not in yet stays open until that
instance arrives, then is ready at once (completed by "mpps"); a DISCONTINUED step completes nothing and
the web API shows its reason.
"""

from __future__ import annotations

from pathlib import Path

import httpx
from pydantic import SecretStr

from app.settings import Settings
from domain.events import PerformedProcedureStep, encode_performed_procedure_step
from tests.aggregator.conftest import (
    SyntheticStudy,
    TopicCollector,
    Worker,
    make_event,
    new_worker,
    produce_events,
    produce_raw,
)
from tests.conftest import wait_for

TOKEN = "mpps-test-token"


def step(record: PerformedProcedureStep) -> tuple[bytes, bytes]:
    return record.key, encode_performed_procedure_step(record)


def test_a_completed_step_makes_its_study_ready_once_its_instances_are_in_and_a_discontinued_one_is_shown(
    aggregator_settings: Settings, workers: list[Worker], ready_topic: TopicCollector, tmp_path: Path
) -> None:
    settings = aggregator_settings.model_copy(
        update={"quiet_period": 300.0, "web_token": SecretStr(TOKEN), "web_host": "localhost"}
    )
    completed, stopped = SyntheticStudy(series=1, per_series=3), SyntheticStudy(series=1, per_series=2)
    worker = new_worker(workers, settings, tmp_path, "w1").start()
    worker.wait_started()

    late = make_event(completed.uid, completed.series_uid(0), 4, series_number=1)  # read after the step
    named = (*[e.sop_instance_uid for e in completed.events()], late.sop_instance_uid)
    produce_events(settings, completed.events() + stopped.events())
    produce_raw(
        settings,
        [
            step(PerformedProcedureStep(completed.uid, "2.25.501", "COMPLETED", named, calling_ae="MOD1")),
            step(
                PerformedProcedureStep(
                    stopped.uid, "2.25.502", "DISCONTINUED", reason_code="110514", reason_meaning="Wrong worklist entry"
                )
            ),
        ],
    )
    wait_for(lambda: "names 1 instance(s) not seen yet" in worker.log(), 60, what="the step awaiting an instance")
    assert not ready_topic.ready_for(completed.uid)

    produce_events(settings, [late])
    wait_for(lambda: ready_topic.ready_for(completed.uid), 30, what="the completed study, long before 300 s")
    (record,) = ready_topic.ready_for(completed.uid)
    assert (record.revision, record.number_of_instances, record.completed_by) == (1, 4, "mpps")

    response = httpx.get(
        f"http://localhost:{worker.web_port}/api/studies/{stopped.uid}",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=15,
    )
    assert response.status_code == 200, response.text[:300]
    shown = response.json()
    assert shown["mpps"] == {
        "uid": "2.25.502",
        "status": "DISCONTINUED",
        "waiting_for_instances": 0,
        "reason": {"code": "110514", "meaning": "Wrong worklist entry"},
    }
    assert (shown["status"], shown["completed_by"]) == ("receiving", None)  # discontinued: not a completion
    assert not ready_topic.ready_for(stopped.uid)
