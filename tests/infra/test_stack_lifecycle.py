"""`studystream stack` and `studystream run` as a user runs them, on private ports and a private state dir.

These start their own broker (and reuse the already running FHIR server for `run`), so they never
disturb the stack the rest of the suite uses.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from app.settings import Settings
from infra import processes
from infra.stack import kafka_healthy, new_cluster_id
from tests.conftest import free_port, wait_for

CLI = [sys.executable, "-m", "app.cli"]


def _private_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDYSTREAM_")}
    env.update(
        STUDYSTREAM_STATE_DIR=str(tmp_path / "state"),
        STUDYSTREAM_BROKER_URL=f"kafka://localhost:{free_port()}",
        STUDYSTREAM_KAFKA_CONTROLLER_PORT=str(free_port()),
        STUDYSTREAM_WEB_PORT=str(free_port()),
        STUDYSTREAM_DICOM_PORT=str(free_port()),
        STUDYSTREAM_STORAGE_DIR=str(tmp_path / "received"),
        STUDYSTREAM_BUNDLES_DIR=str(tmp_path / "bundles"),
    )
    return env


def _settings(env: dict[str, str]) -> Settings:
    return Settings(
        **{k.removeprefix("STUDYSTREAM_").lower(): v for k, v in env.items() if k.startswith("STUDYSTREAM_")}
    )


def _stack(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "stack", *args], env=env, capture_output=True, text=True, timeout=600)


def _pids_under(state_dir: Path) -> list[int]:
    """Live processes whose command line mentions the private state dir."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(state_dir) in cmdline and processes.is_alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def test_stack_up_twice_is_harmless_and_down_leaves_no_process(tmp_path: Path) -> None:
    env = _private_env(tmp_path)
    settings = _settings(env)
    state_dir = settings.state_dir.resolve()

    first = _stack(env, "up", "--service", "kafka")
    assert first.returncode == 0, first.stdout + first.stderr
    pid = int((state_dir / "run" / "kafka.pid").read_text())
    assert kafka_healthy(settings)

    second = _stack(env, "up", "--service", "kafka")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "already running" in second.stdout
    assert int((state_dir / "run" / "kafka.pid").read_text()) == pid  # nothing new started

    status = _stack(env, "status", "--service", "kafka")
    assert status.returncode == 0 and f"pid {pid}" in status.stdout

    down = _stack(env, "down", "--service", "kafka")
    assert down.returncode == 0 and "stopped" in down.stdout
    assert not processes.is_alive(pid)
    assert _pids_under(state_dir) == []
    assert not (state_dir / "run" / "kafka.pid").exists()
    assert (state_dir / "data" / "kafka" / "meta.properties").exists()  # data kept

    assert _stack(env, "status", "--service", "kafka").returncode == 1

    purge = _stack(env, "down", "--service", "kafka", "--purge")
    assert purge.returncode == 0
    assert not (state_dir / "data" / "kafka").exists()


def test_run_starts_the_pipeline_and_ctrl_c_stops_everything(tmp_path: Path, fhir: Settings) -> None:
    env = _private_env(tmp_path)
    env["STUDYSTREAM_FHIR_BASE_URL"] = fhir.fhir_base_url  # reused: `run` must not stop what it did not start
    settings = _settings(env)
    state_dir = settings.state_dir.resolve()
    log = (tmp_path / "run.log").open("w")
    proc = subprocess.Popen([*CLI, "run"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: "Press Ctrl-C" in (tmp_path / "run.log").read_text(), 300, what="the pipeline to start")
        assert kafka_healthy(settings)
        wait_for(lambda: _worker_ready(settings), 120, what="the worker's web server")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    output = (tmp_path / "run.log").read_text()
    # The addresses and the login once, StudyStream's lines (no Faust tables), then what was stopped.
    assert output.count("StudyStream is running") == 1 and output.count("Press Ctrl-C") == 1
    assert output.count(f"DICOM     localhost:{settings.dicom_port}, AE title {settings.ae_title}") == 1
    assert output.count(f"web view  http://localhost:{settings.web_port}/  user studystream, password ") == 1
    assert output.count(f"FHIR      {settings.fhir_base_url}") == 1 and output.count("Kafka     localhost:") == 1
    assert "worker ready" in output and "listening on" in output
    assert not [s for s in ("opening partition", "Subscription", "[^Worker]", "+-----") if s in output]
    assert "receiver: stopped" in output and "worker: stopped" in output
    assert "kafka: stopped" in output
    assert "fhir: stopped" not in output
    assert "Stopped: worker, receiver, kafka. Left running: fhir" in output
    assert not kafka_healthy(settings)
    assert _pids_under(state_dir) == []


def _worker_ready(settings: Settings) -> bool:
    import httpx

    try:
        return httpx.get(f"http://localhost:{settings.web_port}/", timeout=2).status_code < 500
    except httpx.HTTPError:
        return False


@pytest.fixture(autouse=True)
def _no_leftovers(tmp_path: Path):
    yield
    # Whatever a failed assertion left running under the private state dir is killed here.
    for pid in _pids_under((tmp_path / "state").resolve()):
        try:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_cluster_ids_never_start_with_a_dash() -> None:
    """kafka-storage would read such an id as an option (1 start in 64 failed before)."""
    ids = [new_cluster_id() for _ in range(5000)]
    assert not [i for i in ids if i.startswith("-")]
    assert len(set(ids)) == len(ids) and all(len(i) == 22 for i in ids)
