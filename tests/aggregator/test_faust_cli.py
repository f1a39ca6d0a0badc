"""``faust -A app.worker:app worker``, Faust's own command, runs the same worker as ``studystream worker``:
it prepares the topics and a state directory that does not exist yet, logs in StudyStream's format, and
aggregates."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from app.settings import Settings
from tests.aggregator.conftest import SyntheticStudy, TopicCollector, Worker, produce_events
from tests.conftest import wait_for, worker_env

FAUST = str(Path(sys.executable).with_name("faust"))
OUR_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\S+ (INFO|WARNING|ERROR) +[a-z]+\[\d+\] ")


def test_faust_s_own_worker_command_prepares_state_logs_our_way_and_aggregates(
    aggregator_settings: Settings, ready_topic: TopicCollector, tmp_path: Path
) -> None:
    fresh = aggregator_settings.model_copy(update={"state_dir": tmp_path / "never" / "made"})
    worker = Worker(worker_env(fresh), tmp_path, "faust-cli", command=[FAUST, "-A", "app.worker:app", "worker"])
    worker.start()
    try:
        worker.wait_started()
        study = SyntheticStudy(series=1, per_series=3)
        produce_events(aggregator_settings, study.events())
        wait_for(lambda: ready_topic.ready_for(study.uid), 60, what="the study ready through faust -A")
        assert ready_topic.ready_for(study.uid)[0].number_of_instances == 3
    finally:
        worker.stop()
    assert (tmp_path / "never" / "made").is_dir()
    lines = [line for line in worker.log().splitlines() if not line.startswith(("|", "+"))]  # Faust's banner
    assert lines and all(OUR_LINE.match(line) for line in lines), "\n".join(lines[:20])
