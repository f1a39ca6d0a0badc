"""The receiver's DICOMweb STOW-RS front door settings, a base of :class:`app.settings.Settings`.

Kept apart like :mod:`app.dicom_settings`; every process still reads the one :class:`app.settings.Settings`,
and the README table lists these fields too. :mod:`scp.stow` applies them.
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings

from app.dicom_settings import SETTINGS_CONFIG

DEFAULT_DICOMWEB_PORT = 8104


class StowSettings(BaseSettings):
    """DICOMweb STOW-RS on the receiver. Field ``x`` is read from ``STUDYSTREAM_X``."""

    model_config = SETTINGS_CONFIG

    # --- Receiver: DICOMweb STOW-RS ----------------------------------------------------------------
    receiver_dicomweb_port: int = Field(
        DEFAULT_DICOMWEB_PORT,
        ge=0,
        le=65535,
        description="Port of the receiver's DICOMweb STOW-RS front door (`POST /dicomweb/studies[/{study}]`, "
        "on `dicom_host`, HTTPS with the `receiver_tls_*` settings); 0 turns it off. It stays off, with a "
        "warning, while neither `receiver_dicomweb_token` nor `receiver_tls_ca` is set. Every receiving "
        "process serves it (SO_REUSEPORT, like the DICOM port).",
    )
    receiver_dicomweb_token: SecretStr | None = Field(
        None,
        description="Bearer token STOW-RS requests must carry (`Authorization: Bearer ...`); set it in the "
        "environment, never in a file under version control.",
    )
    receiver_dicomweb_calling_ae: str = Field(
        "DICOMWEB",
        min_length=1,
        max_length=64,
        description="What instances stored through STOW-RS carry as their event's `calling_ae` (the source "
        "name completeness rules see); `called_ae` is `ae_title`.",
    )
    receiver_dicomweb_max_request_bytes: int = Field(
        8 * 1024**3,
        ge=1024,
        description="Largest STOW-RS request body (bytes): a larger Content-Length is refused with 413 before "
        "the body is read, a body growing past it is cut off with 413 (parts stored before stay stored). "
        "Each part is limited by `receiver_max_dataset_bytes` (a larger one fails with 0xA700).",
    )
    receiver_stow_is_study_boundary: bool = Field(
        False,
        description="Treat one STOW-RS request as a whole study: when every part of a request was stored, a "
        "`stow_request` record follows its instances on imaging.raw and the aggregator completes the study "
        "at once (as for Storage Commitment) instead of waiting for the quiet period.",
    )
