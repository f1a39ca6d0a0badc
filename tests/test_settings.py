"""Settings come from STUDYSTREAM_* variables and .env; the README documents every one."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import ENV_PREFIX, Settings
from app.topology import topology
from tests.conftest import ROOT


def test_defaults(isolated_env: Path) -> None:
    settings = Settings()
    assert settings.broker_url == "kafka://localhost:9092"
    assert settings.bootstrap_servers == ["localhost:9092"]
    assert settings.fhir_base_url == "http://localhost:8080/fhir"
    assert [d.name for d in topology(settings).public] == ["imaging.raw", "imaging.study.ready", "imaging.dlq"]
    assert settings.topic_partitions == 8
    assert settings.quiet_period == 30.0
    assert settings.ae_title == "STUDYSTREAM"
    assert settings.dicom_port == 11112
    assert settings.storage_dir == Path("received_dicoms")
    assert settings.bundles_dir == Path("bundles")
    assert settings.web_token is None


def test_environment_variables_override_defaults(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDYSTREAM_BROKER_URL", "broker-a:9093;broker-b:9093")
    monkeypatch.setenv("STUDYSTREAM_FHIR_BASE_URL", "https://fhir.example.org/r4/")
    monkeypatch.setenv("STUDYSTREAM_STATE_DIR", "/var/lib/studystream")
    monkeypatch.setenv("STUDYSTREAM_STORAGE_DIR", "/data/dicom")
    monkeypatch.setenv("STUDYSTREAM_BUNDLES_DIR", "/data/bundles")
    monkeypatch.setenv("STUDYSTREAM_QUIET_PERIOD", "1.5")
    monkeypatch.setenv("STUDYSTREAM_WEB_TOKEN", "s3cret-token")
    monkeypatch.setenv("STUDYSTREAM_AE_TITLE", "PACS_BRIDGE")
    monkeypatch.setenv("STUDYSTREAM_DICOM_PORT", "104")
    settings = Settings()
    assert settings.bootstrap_servers == ["broker-a:9093", "broker-b:9093"]
    assert settings.fhir_base_url == "https://fhir.example.org/r4"
    assert settings.fhir_port == 443 and settings.fhir_path == "/r4"
    assert settings.state_dir == Path("/var/lib/studystream")
    assert settings.storage_dir == Path("/data/dicom")
    assert settings.bundles_dir == Path("/data/bundles")
    assert settings.quiet_period == 1.5
    assert settings.web_token is not None and settings.web_token.get_secret_value() == "s3cret-token"
    assert "s3cret-token" not in repr(settings)  # secrets never print
    assert settings.ae_title == "PACS_BRIDGE"
    assert settings.dicom_port == 104


def test_dotenv_file_is_read_and_environment_wins(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (isolated_env / ".env").write_text("STUDYSTREAM_QUIET_PERIOD=7\nSTUDYSTREAM_AE_TITLE=FROM_DOTENV\n")
    assert Settings().quiet_period == 7.0
    assert Settings().ae_title == "FROM_DOTENV"
    monkeypatch.setenv("STUDYSTREAM_AE_TITLE", "FROM_ENV")
    assert Settings().ae_title == "FROM_ENV"


def test_invalid_values_are_rejected_with_the_setting_named(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STUDYSTREAM_QUIET_PERIOD", "-1")
    with pytest.raises(ValueError, match="quiet_period"):
        Settings()


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [
        f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields if f"`{ENV_PREFIX}{name.upper()}`" not in readme
    ]
    assert missing == [], f"README.md lacks: {missing} (run `python -m app.settings_doc` to regenerate the table)"
