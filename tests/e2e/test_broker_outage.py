"""The broker stopped for a while mid-stream. The shared broker must stay up for everyone else, so this
test runs the whole pipeline on a private broker (`studystream stack up --service kafka` with its own
state directory and ports), stops it (data kept) and starts it again."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.settings import Settings
from infra.stack import kafka_healthy
from scu import synth
from tests.conftest import wait_for
from tests.e2e.conftest import start_e2e, stop_e2e, studies_in
from tests.infra.test_stack_lifecycle import _pids_under, _private_env, _settings, _stack


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[tuple[dict[str, str], Settings]]:
    env = _private_env(tmp_path / "broker")
    settings = _settings(env)
    up = _stack(env, "up", "--service", "kafka")
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        yield env, settings
    finally:
        _stack(env, "down", "--service", "kafka", "--purge")
        for pid in _pids_under(settings.state_dir.resolve()):
            try:
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_broker_stopped_mid_stream_loses_nothing(
    private_broker: tuple[dict[str, str], Settings], fhir: Settings, tmp_path: Path
) -> None:
    env, broker = private_broker
    e2e = start_e2e(broker, fhir, tmp_path / "pipeline")
    try:
        files = synth.write_studies(tmp_path / "in", studies=4, series=2, instances=6)
        studies = studies_in(files)
        e2e.remember(studies)
        before = [p for s in studies.values() for p in s.halves()[0]]
        during = [p for s in studies.values() for p in s.halves()[1]]

        assert e2e.send(*before, name="send-before")["stored"] == len(before)
        wait_for(lambda: len(e2e.published_sops()) >= len(before), 30, what="the first halves on imaging.raw")
        down = _stack(env, "down", "--service", "kafka")
        assert down.returncode == 0 and not kafka_healthy(broker, timeout=2), down.stdout + down.stderr
        # Idle, the receiver's publisher still notices (its periodic probe) and /health says so.
        wait_for(
            lambda: e2e.receiver.health()["broker_connected"] is False, 30, what="/health to report the broker down"
        )

        during_send = e2e.send(*during, name="send-during")  # the receiver must keep accepting
        assert during_send["stored"] == len(during) and during_send["failed"] == 0
        outbox = wait_for(
            lambda: int(e2e.receiver.health()["outbox_depth"]) >= len(during) and e2e.receiver.health(),
            30,
            what="the events of the instances received meanwhile to wait in the outbox",
        )
        print(f"\nbroker down: {len(during)} instances acknowledged, receiver health {outbox}")

        up = _stack(env, "up", "--service", "kafka")
        assert up.returncode == 0, up.stdout + up.stderr
        e2e.wait_all(studies, timeout=150)
        assert e2e.receiver.health()["broker_connected"] is True
        wait_for(lambda: int(e2e.receiver.health()["outbox_depth"]) == 0, 30, what="the outbox to drain")
        acknowledged = {sop for s in studies.values() for sop in s.instances}
        e2e.assert_nothing_lost_nothing_duplicated(studies, len(files), acknowledged, "broker stopped")
        e2e.assert_no_phi_in_logs()
    finally:
        stop_e2e(e2e)
