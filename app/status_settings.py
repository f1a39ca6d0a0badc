"""The settings of ``studystream status`` (thresholds, timeouts, where the receivers and workers answer).

A base of :class:`app.settings.Settings`, kept apart like :mod:`app.dicom_settings`; every process
still reads the one :class:`app.settings.Settings`, and the README table lists these fields too.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings

from app.dicom_settings import SETTINGS_CONFIG


class StatusSettings(BaseSettings):
    """`studystream status`. Field ``x`` is read from ``STUDYSTREAM_X``."""

    model_config = SETTINGS_CONFIG

    # --- Status (`studystream status`) -------------------------------------------------------------
    status_receiver_urls: str = Field(
        "",
        description="Receivers' `/health` URLs `studystream status` probes, comma separated; empty: the local "
        "ones (`http://127.0.0.1:<receiver_metrics_port + slot>/health` for each of `receiver_processes`); "
        "`none`: no receiver.",
    )
    status_worker_urls: str = Field(
        "",
        description="Workers' web URLs `studystream status` asks for studies and health, comma separated; "
        "empty: the URLs the members of the consumer group advertise (Faust's canonical URL, `--web-host`).",
    )
    status_timeout: float = Field(
        10.0, gt=0, description="Seconds each probe of `studystream status` may take before its component is down."
    )
    status_max_body_bytes: int = Field(
        1024 * 1024, ge=1024, description="Largest answer (bytes) `studystream status` reads from a receiver or worker."
    )
    status_lag_threshold: int = Field(
        1000, ge=0, description="Consumer lag (records) of one partition above which the pipeline is degraded."
    )
    status_outbox_threshold: int = Field(
        1000, ge=0, description="Receiver outbox depth (events not yet in Kafka) above which it is degraded."
    )
    status_quarantine_threshold: int = Field(
        0, ge=0, description="Events in a receiver's quarantine above which it is degraded (0: any)."
    )
    status_dlq_window: float = Field(
        3600.0, gt=0, description="Seconds back `studystream status` counts dead letters (the last hour)."
    )
    status_dlq_threshold: int = Field(
        0, ge=0, description="Dead letters within `status_dlq_window` above which the pipeline is degraded (0: any)."
    )
    status_parked_threshold: int = Field(
        0, ge=0, description="Uploads parked by a FHIR outage above which the pipeline is degraded (0: any)."
    )
    status_failed_threshold: int = Field(
        0, ge=0, description="Failed plus patient-conflict studies above which the pipeline is degraded (0: any)."
    )
    status_uid_limit: int = Field(
        10, ge=0, description="Most failed or conflicting study UIDs `studystream status` lists."
    )
