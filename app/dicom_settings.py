"""The DICOM side's settings (receiver and sender), the base of :class:`app.settings.Settings`.

Kept apart only to keep each module readable: every process reads one :class:`app.settings.Settings`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "STUDYSTREAM_"
SETTINGS_CONFIG = SettingsConfigDict(
    env_prefix=ENV_PREFIX,
    env_file=".env",
    env_file_encoding="utf-8",
    extra="ignore",
    frozen=True,
)


class DicomSettings(BaseSettings):
    """Receiver (C-STORE SCP) and sender (SCU) settings. Field ``x`` is read from ``STUDYSTREAM_X``."""

    model_config = SETTINGS_CONFIG

    # --- DICOM -------------------------------------------------------------------------------------
    ae_title: str = Field(
        "STUDYSTREAM", max_length=16, description="AE title of the receiver (and default calling AE of the sender)."
    )
    # Modalities connect from other hosts, so the receiver listens on every interface by default.
    dicom_host: str = Field("0.0.0.0", description="Address the receiver listens on.")  # noqa: S104
    dicom_port: int = Field(11112, ge=1, le=65535, description="Port the receiver listens on.")

    # --- Receiver ----------------------------------------------------------------------------------
    receiver_allowed_calling_aes: str = Field(
        "",
        description="Calling AE titles allowed to associate, comma separated, each optionally `AE@host`; empty: any.",
    )
    receiver_commitment_peers: str = Field(
        "",
        description="Where to send a Storage Commitment result when the requesting association is gone: "
        "`AE=host:port`, comma separated (the sender's AE title and its own DICOM listener).",
    )
    receiver_commitment_report_timeout: float = Field(
        15.0,
        gt=0,
        description="Seconds the receiver waits for a sender to answer a Storage Commitment result (N-EVENT-REPORT).",
    )
    receiver_commitment_record_max_uids: int = Field(
        10_000,
        ge=1,
        le=100_000,
        description="Instances one storage_commitment record on imaging.raw names; a longer request is split "
        "into parts (the aggregator waits for all of them).",
    )
    receiver_mpps_max_instances: int = Field(
        10_000,
        ge=1,
        le=100_000,
        description="Instances of one Modality Performed Procedure Step the receiver keeps and names in its "
        "performed_procedure_step record; a step naming more is accepted, but its record completes nothing "
        "(the quiet period decides).",
    )
    receiver_rejection_max_instances: int = Field(
        10_000,
        ge=1,
        le=100_000,
        description="Instances of its study one IOCM rejection note (Key Object Selection document) may "
        "reject; references past it are not read and the event names the sequence as clipped.",
    )
    receiver_event_max_values: int = Field(
        64, ge=1, le=1000, description="Values of one multi-valued attribute an instance event copies."
    )
    receiver_event_max_items: int = Field(
        64, ge=1, le=256, description="Items of a sequence (procedure codes) an instance event copies."
    )
    receiver_event_unbounded_chars: int = Field(
        10_240,
        ge=64,
        le=65_536,
        description="Characters an instance event copies of an attribute whose VR has no maximum length "
        "(UT, UC, UR, unknown); every other attribute is clipped to its VR's maximum (PS3.5 table 6.2-1).",
    )
    receiver_tls_cert: Path | None = Field(
        None,
        description="PEM certificate of the receiver; with `receiver_tls_key` turns on TLS.",
    )
    receiver_tls_key: Path | None = Field(None, description="PEM private key of the receiver's TLS certificate.")
    receiver_tls_ca: Path | None = Field(
        None,
        description="PEM CA bundle; when set, senders must present a certificate it signed.",
    )
    receiver_max_associations: int = Field(
        16,
        ge=1,
        description="Concurrent associations one receiving process accepts.",
    )
    receiver_max_associations_per_ae: int = Field(
        8, ge=1, description="Concurrent associations one calling AE title may hold open on one receiving process."
    )
    receiver_require_called_ae: bool = Field(
        True,
        description="Reject associations whose called AE title is not `ae_title` (A-ASSOCIATE-RJ, called AE "
        "title not recognised).",
    )
    receiver_max_dataset_bytes: int = Field(
        4 * 1024**3,
        ge=1024,
        description="Largest dataset one C-STORE may carry (bytes); past it the rest is dropped as it arrives, "
        "the partial file removed, and the sender gets 0xA700.",
    )
    receiver_max_inflated_bytes: int = Field(
        1024**3,
        ge=1024,
        description="Largest size a Deflated Explicit VR dataset may inflate to (bytes); past it the C-STORE "
        "is refused with 0xA700 (inflated in chunks: the receiver's memory stays bounded).",
    )
    receiver_min_free_bytes: int = Field(
        256 * 1024**2,
        ge=0,
        description="Free space the storage directory must keep (bytes); below it new C-STOREs get 0xA700 at "
        "once instead of failing mid-write.",
    )
    receiver_max_action_bytes: int = Field(
        16 * 1024**2,
        ge=1024,
        description="Largest dataset of an N-ACTION (Storage Commitment request), N-CREATE or N-SET (MPPS) the "
        "receiver reads (bytes); past it the request is refused.",
    )
    receiver_acse_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds the receiver waits for association messages (the ARTIM timer: A-ASSOCIATE-RQ "
        "after connect, the peer's close after a release or reject).",
    )
    receiver_dimse_timeout: float = Field(
        60.0, gt=0, description="Seconds the receiver waits for the rest of a DIMSE message once it began."
    )
    receiver_network_timeout: float = Field(
        60.0,
        gt=0,
        description="Seconds of network silence after which the receiver drops an association; also the time "
        "each 64 KiB of a fragment may take (a peer trickling bytes is dropped).",
    )
    receiver_max_pdu: int = Field(
        131072,
        ge=0,
        description="Largest PDU the receiver accepts (bytes); 0 means unlimited.",
    )
    receiver_fsync: bool = Field(
        True,
        description=(
            "fsync each stored file and the outbox before answering success, and the file's directory "
            "before publishing its event (off: benchmarks)."
        ),
    )
    receiver_inline_store: bool = Field(
        True,
        description="While one association is the only one open, store its instances on the event loop itself "
        "(the hand-off to a thread and back was ~0.6 ms of a C-STORE's 4.5); with more open, or off, they are "
        "stored in the thread pool so that no association waits behind another's disk.",
    )
    receiver_metrics_port: int = Field(
        9110,
        ge=0,
        le=65535,
        description="Port of the receiver's Prometheus `/metrics` and `/health`; 0 turns them off.",
    )
    receiver_outbox_path: Path | None = Field(
        None,
        description="SQLite outbox of unpublished events (default: `<state_dir>/receiver-outbox.sqlite`).",
    )
    receiver_publish_batch: int = Field(500, ge=1, description="Events the receiver's publisher sends per round.")
    receiver_producer_linger: float = Field(
        0.002,
        ge=0,
        description="Seconds the receiver's Kafka producer waits to fill a request with the events of one round.",
    )
    receiver_publish_linger: float = Field(
        0.05,
        ge=0,
        description="Seconds the publisher waits after the first new event to take more in the same round "
        "(fewer, larger rounds leave the associations more CPU; adds at most this to publish latency).",
    )
    receiver_publish_retry_initial: float = Field(
        0.5,
        gt=0,
        description="First wait (seconds) before the publisher retries a failed publish.",
    )
    receiver_publish_retry_max: float = Field(
        10.0,
        gt=0,
        description="Longest wait (seconds) between the publisher's retries.",
    )
    receiver_index_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds a receiving process waits for the shared instance index (Storage Commitment "
        "look-ups) while another process writes it.",
    )
    receiver_broker_probe_interval: float = Field(
        5.0,
        gt=0,
        description="Seconds between the publisher's broker reachability checks while it has nothing to publish "
        "(what `/health` reports as `broker_connected`).",
    )
    receiver_publish_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds one publish round may take before it is retried.",
    )
    receiver_processes: int = Field(1, ge=1, description="Receiving processes sharing the DICOM port (SO_REUSEPORT).")
    receiver_fault_after_store: int = Field(
        0,
        ge=0,
        description="Testing: the receiver exits (os._exit) after this many stored instances, unpublished; 0 = off.",
    )

    # --- Sender ------------------------------------------------------------------------------------
    sender_max_pdu: int = Field(
        131072, ge=0, description="Largest PDU the sender accepts from the peer (bytes, 0 = unlimited)."
    )
    sender_studies_in_flight: int = Field(
        1, ge=1, le=64, description="Studies `studystream send` sends at once, each in its own association and process."
    )
    sender_max_contexts: int = Field(
        128, ge=1, le=128, description="Presentation contexts per association; a study needing more is split."
    )
    sender_retries: int = Field(3, ge=0, description="Times the sender retries a failed or lost association.")
    sender_retry_backoff: float = Field(
        1.0, ge=0, description="Seconds before the sender's first retry; doubled for each further retry."
    )
    sender_acse_timeout: float = Field(30.0, gt=0, description="Seconds the sender waits for association messages.")
    sender_dimse_timeout: float = Field(
        60.0, gt=0, description="Seconds the sender waits for a C-STORE or N-ACTION response."
    )
    sender_network_timeout: float = Field(
        60.0, gt=0, description="Seconds the sender waits on an idle network connection."
    )
    sender_commitment_timeout: float = Field(
        10.0, ge=0, description="Seconds the sender waits for a Storage Commitment result on the same association."
    )
