"""docker-compose.yml: the official images, the project's image for receiver and worker, scalable workers."""

from __future__ import annotations

import os
import shutil
import subprocess

import yaml

from tests.conftest import ROOT


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_uses_official_images_and_the_project_image() -> None:
    services = _compose()["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["fhir"]["image"].startswith("hapiproject/hapi:")
    for name in ("receiver", "worker"):
        assert services[name]["build"] == "."
    assert services["receiver"]["command"] == ["receive"]
    assert services["worker"]["command"][0] == "worker"


def test_workers_can_scale() -> None:
    worker = _compose()["services"]["worker"]
    # A fixed container name or host port would make `--scale worker=3` fail; a shared named volume for
    # the table data would make RocksDB's lock fail. Only the bundles volume is shared.
    assert "container_name" not in worker
    assert all(":" not in str(port) for port in worker.get("ports", []))
    assert [v.split(":")[1] for v in worker.get("volumes", [])] == ["/data/bundles"]


def test_compose_client_accepts_the_file() -> None:
    client = shutil.which("docker-compose")
    assert client, "docker-compose is installed by `make deps`"
    result = subprocess.run(
        [client, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        env={**os.environ, "STUDYSTREAM_WEB_TOKEN": "compose-check"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
