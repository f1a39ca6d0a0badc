"""`studystream worker` when Kafka is not there: help still works, a start fails with one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, free_port

STUDYSTREAM = str(Path(sys.executable).with_name("studystream"))


def _worker(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDYSTREAM_")}
    env.update(STUDYSTREAM_BROKER_URL=f"kafka://127.0.0.1:{free_port()}", STUDYSTREAM_STATE_DIR=str(tmp_path))
    return subprocess.run(
        [STUDYSTREAM, "worker", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_worker_help_needs_no_broker(tmp_path: Path) -> None:
    result = _worker("--help", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "--datadir" in result.stdout and "--web-port" in result.stdout


def test_worker_without_a_broker_says_so_in_one_line(tmp_path: Path) -> None:
    result = _worker("-l", "info", tmp_path=tmp_path)
    assert result.returncode == 2
    assert "error: cannot reach Kafka at kafka://127.0.0.1:" in result.stderr
    assert "Traceback" not in result.stderr
