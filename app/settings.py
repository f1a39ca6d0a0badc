"""The one configuration object: environment variables prefixed ``STUDYSTREAM_`` and an optional ``.env``.

Every limit the system applies (timeouts, sizes, retries) is a field here with a documented default;
no other module defines its own constants. ``README.md`` lists every field; ``tests/test_settings.py``
checks that the README and this class agree.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator

from app.dicom_settings import ENV_PREFIX as ENV_PREFIX  # re-exported: the prefix of every setting
from app.dicom_settings import SETTINGS_CONFIG, DicomSettings
from app.log_settings import LogSettings
from app.status_settings import StatusSettings
from app.stow_settings import StowSettings
from domain.completeness import CompletenessPolicy, format_rules, parse_rules
from domain.local_time import zone_of
from domain.mapping_options import MAPPING_DEFAULTS

ZONEINFO_DIR = "/usr/share/zoneinfo/"


def host_timezone() -> str:
    """The host's own time zone as an IANA name: ``TZ``, else ``/etc/timezone``, else ``/etc/localtime``'s link.

    DICOM times without TimezoneOffsetFromUTC are the site's local time, and the receiver usually runs
    at the site. ``UTC`` when the host names no zone.
    """
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    try:
        candidates.append(Path("/etc/timezone").read_text(encoding="utf-8").strip())
    except OSError:
        pass
    try:
        link = os.readlink("/etc/localtime")
        candidates.append(link.split("zoneinfo/", 1)[1] if "zoneinfo/" in link else "")
    except OSError:
        pass
    for name in candidates:
        if name:
            try:
                zone_of(name)
            except ValueError:
                continue
            return name
    return "UTC"


class Settings(StatusSettings, LogSettings, StowSettings, DicomSettings):
    """StudyStream settings. Field ``x`` is read from ``STUDYSTREAM_X``; the receiver's and the sender's
    are declared in :class:`app.dicom_settings.DicomSettings`."""

    model_config = SETTINGS_CONFIG

    # --- Kafka -------------------------------------------------------------------------------------
    broker_url: str = Field(
        "kafka://localhost:9092", description="Kafka bootstrap server(s), `kafka://host:port[;host:port]`."
    )
    app_id: str = Field("studystream", description="Faust application id; also the consumer group id.")
    topic_raw: str = Field("imaging.raw", description="Topic with one event per received instance.")
    topic_ready: str = Field("imaging.study.ready", description="Topic with one event per complete study revision.")
    topic_dlq: str = Field("imaging.dlq", description="Dead-letter topic for poison events and rejected uploads.")
    topic_partitions: int = Field(8, ge=1, description="Partitions of every StudyStream topic and table.")
    max_message_bytes: int = Field(
        8 * 1024 * 1024, ge=1024 * 1024, description="Largest Kafka message StudyStream produces or fetches (bytes)."
    )
    topic_ready_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds a process waits for topics it created to be listed with a leader for every "
        "partition (a consumer subscribing earlier ignores the missing ones).",
    )

    # --- Storage -----------------------------------------------------------------------------------
    state_dir: Path = Field(Path("state"), description="Worker state, local stack data, pid files and logs.")
    storage_dir: Path = Field(Path("received_dicoms"), description="Where the receiver stores instances as received.")
    bundles_dir: Path = Field(
        Path("bundles"), description="Where every FHIR transaction Bundle is saved before it is posted."
    )
    bundles_retention_days: float = Field(
        30.0, ge=0, description="Days a saved Bundle is kept before the worker deletes it; 0 keeps them forever."
    )
    bundles_retention_check_interval: float = Field(
        3600.0, gt=0, description="Seconds between two sweeps of `bundles_dir` for Bundles past their retention."
    )

    # --- Study completeness ------------------------------------------------------------------------
    quiet_period: float = Field(30.0, gt=0, description="Seconds without a new instance after which a study is ready.")
    completeness_rules: str = Field(
        "",
        description="Completeness rules by source, first match wins: `<match>:<terms>` separated by `;`, match "
        "`ae=<calling AE>` and/or `modality=<code>` or `*`, terms `quiet=<duration>` and "
        "`trust=<signals>` (`commitment`, `mpps`, `stow` joined by `+`, or `none`), e.g. "
        "`ae=CT_SCANNER1,modality=CT:quiet=60s,trust=commitment; modality=CR:quiet=5s; *:quiet=30s`. "
        "A source no rule matches: `quiet_period`, every signal trusted. See README, Completeness.",
    )

    # --- Aggregator --------------------------------------------------------------------------------
    aggregator_check_interval: float = Field(
        1.0, gt=0, description="Seconds between two scans of a worker's pending studies for an elapsed quiet period."
    )
    aggregator_mpps_timeout: float = Field(
        600.0,
        ge=0,
        description="Seconds a study's quiet period waits, after a COMPLETED Modality Performed Procedure Step "
        "was read, for the instances it names that are not in yet; then the quiet period decides as without it.",
    )
    aggregator_max_instances: int = Field(
        40_000,
        ge=1,
        description="Most instances one study revision may hold; further new instances are dead-lettered "
        "(a ready record must fit in `max_message_bytes`).",
    )
    aggregator_session_timeout: float = Field(
        30.0,
        ge=6.0,
        description="Seconds before Kafka gives a silent (crashed) worker's partitions to the others.",
    )
    aggregator_stall_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds an owned input partition (imaging.raw, imaging.study.ready, the retry and internal "
        "topics) may lag behind its end without any progress before the worker logs it and seeks it back to "
        "where it had handled records up to (a partition Faust stopped delivering after a rebalance, seen in tests).",
    )
    aggregator_producer_linger: float = Field(
        0.01,
        ge=0,
        description="Seconds a worker's producer waits to batch table changelog and output records "
        "(0 sends almost every record in its own request).",
    )
    aggregator_batch_size: int = Field(
        1000,
        ge=1,
        description="Most imaging.raw events the aggregator handles as one batch (a study's header is written "
        "once per batch, not once per instance).",
    )
    aggregator_batch_timeout: float = Field(
        0.05, gt=0, description="Seconds the aggregator waits to fill a batch before handling what it has."
    )
    aggregator_producer_batch_bytes: int = Field(
        256 * 1024,
        ge=16 * 1024,
        description="Most bytes a worker's producer puts in one batch per partition (changelog records are "
        "small and many: Kafka's 16 KiB default makes many small requests).",
    )
    aggregator_rocksdb_write_buffer_bytes: int = Field(
        4 * 1024 * 1024, ge=1024 * 1024, description="RocksDB write buffer per table partition (bytes)."
    )
    aggregator_rocksdb_block_cache_bytes: int = Field(
        16 * 1024 * 1024, ge=1024 * 1024, description="RocksDB block cache per table partition (bytes)."
    )
    worker_stop_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds a worker stopping after an infrastructure failure gets to leave the group "
        "cleanly before it exits (status 75) without committing the message it was handling.",
    )
    worker_reseek_after: float = Field(
        5.0,
        gt=0,
        description="Seconds after which a partition the delivery gate rewound (a record Faust skipped or "
        "dropped around a rebalance) is sought again if the record has not come back.",
    )
    aggregator_fault_point: Literal[
        "", "after_changelog_send", "after_changelog_ack", "after_ready_ack", "infrastructure_error", "faust_skip"
    ] = Field(
        "",
        description="Testing: the worker exits (os._exit) at this point of a table write or a ready record's "
        "publication, or (`infrastructure_error`) fails as if the broker were gone on a record of "
        "`aggregator_fault_study`, or (`faust_skip`) acknowledges that study's first record without handling "
        "it, as Faust does around a rebalance; empty = off.",
    )
    aggregator_fault_study: str = Field(
        "", description="Testing: the study whose records the `infrastructure_error` and `faust_skip` faults hit."
    )
    aggregator_fault_after_writes: int = Field(
        1, ge=1, description="Testing: the table write (counted from the worker's start) at which the fault fires."
    )

    # --- FHIR --------------------------------------------------------------------------------------
    fhir_base_url: str = Field("http://localhost:8080/fhir", description="FHIR R4 server base URL.")
    fhir_auth: Literal["none", "bearer", "basic", "smart"] = Field(
        "none", description="How to authenticate to the FHIR server."
    )
    fhir_token: SecretStr | None = Field(None, description="Bearer token when `fhir_auth=bearer`.")
    fhir_username: str | None = Field(None, description="User name when `fhir_auth=basic`.")
    fhir_password: SecretStr | None = Field(None, description="Password when `fhir_auth=basic`.")
    fhir_timeout: float = Field(30.0, gt=0, description="Seconds to wait for one FHIR HTTP request.")

    # --- Uploader ----------------------------------------------------------------------------------
    topic_retry: str = Field(
        "imaging.study.retry", description="Topic where the uploader parks study revisions to retry later."
    )
    fhir_default_patient_system: str = Field(
        MAPPING_DEFAULTS.default_patient_system,
        description="Patient.identifier system for a PatientID without IssuerOfPatientID (set it to your "
        "assigning authority's URI).",
    )
    fhir_default_accession_system: str = Field(
        MAPPING_DEFAULTS.default_accession_system,
        description="Identifier system of an accession number without an issuer.",
    )
    fhir_local_issuer_prefix: str = Field(
        MAPPING_DEFAULTS.local_issuer_prefix,
        description="Prefix that turns a local issuer name (not an OID or URI) into an identifier system.",
    )
    fhir_default_timezone: str = Field(
        default_factory=host_timezone,
        description="Time zone (IANA name such as `Asia/Tokyo`, or `+HHMM`) of DICOM dates/times without "
        "TimezoneOffsetFromUTC; default: the host's own zone. An unknown name stops the start.",
    )
    fhir_patient_system_by_ae: dict[str, str] = Field(
        default_factory=dict,
        description="JSON object: calling AE title → Patient.identifier system for senders that send no issuer "
        '(`{"CT1": "urn:oid:1.2.3", "MR1": "urn:oid:1.2.3"}`): one site\'s modalities share a system, '
        "two sites' equal MRNs stay apart.",
    )
    fhir_coding_systems: dict[str, str] = Field(
        default_factory=dict,
        description="JSON object: extra Coding Scheme Designators (`99MYHOSP`) → code system URI; without "
        "one, a local code keeps only its meaning as text.",
    )
    fhir_early_registration: bool = Field(
        False,
        description="Write an ImagingStudy with status `registered` and what is known so far "
        "`fhir_early_registration_delay` after a study's first instance, so order-tracking systems see it "
        "begin; it turns `available` in place when the study is complete.",
    )
    fhir_early_registration_delay: float = Field(
        5.0, ge=0, description="Seconds after a study's first instance before its early registration."
    )
    fhir_update_patient: bool = Field(
        MAPPING_DEFAULTS.update_patient,
        description="Update the Patient elements StudyStream owns (name, gender, birthDate) when a later "
        "instance corrects them; false: create only (the master patient index owns Patient).",
    )
    fhir_revision_tag_system: str = Field(
        MAPPING_DEFAULTS.revision_tag_system,
        description="meta.tag system carrying the study revision on each ImagingStudy (keeps old revisions out).",
    )
    fhir_dicomweb_base_url: str = Field(
        "", description="DICOMweb WADO-RS base URL for the ImagingStudy Endpoint; empty: no Endpoint."
    )
    uploader_inline_attempts: int = Field(
        3, ge=1, description="Attempts of one upload before it is parked in the retry topic."
    )
    uploader_inline_conflict_attempts: int = Field(
        9,
        ge=1,
        description="Attempts of one upload answered 409/412 before it waits out its conflict delay in the retry topic "
        "(a concurrent writer usually clears within a few).",
    )
    uploader_inline_budget: float = Field(
        20.0,
        gt=0,
        description="Seconds one upload (inline retries included) may hold its partition before it is parked.",
    )
    uploader_conflict_attempts: int = Field(
        12,
        ge=1,
        description="Attempts of one study revision answered 409/412 (a concurrent write) before it is "
        "dead-lettered; transient failures (server down, 5xx, 429, 401/403) are retried without limit.",
    )
    uploader_conflict_delay_max: float = Field(
        0.25, ge=0, description="Longest wait (seconds) before retrying an upload that lost a race (409/412)."
    )
    uploader_outage_report_interval: float = Field(
        60.0, gt=0, description="Seconds between the worker's log lines about uploads parked by a FHIR outage."
    )
    uploader_backoff_initial: float = Field(0.5, gt=0, description="Seconds before the first retry of an upload.")
    uploader_backoff_max: float = Field(60.0, gt=0, description="Longest wait (seconds) between two upload attempts.")
    uploader_backoff_jitter: float = Field(
        0.5, ge=0, le=1, description="Random fraction (+/-) applied to every upload backoff."
    )
    uploader_retry_hold_max: float = Field(
        5.0,
        gt=0,
        description="Seconds the retry line holds one parked study waiting for its due time before re-parking it.",
    )
    fhir_smart_token_url: str = Field("", description="SMART backend services token endpoint (`fhir_auth=smart`).")
    fhir_smart_client_id: str = Field("", description="SMART backend services client id.")
    fhir_smart_private_key: Path | None = Field(
        None, description="PEM private key (RSA or EC) signing the SMART client assertion JWT."
    )
    fhir_smart_key_id: str = Field("", description="`kid` of the SMART signing key as registered with the server.")
    fhir_smart_algorithm: Literal["RS384", "ES384"] = Field(
        "RS384", description="JWT algorithm of the SMART client assertion."
    )
    fhir_smart_scopes: str = Field(
        "system/Patient.read system/Patient.write system/ImagingStudy.read system/ImagingStudy.write "
        "system/Endpoint.read system/Endpoint.write",
        description="Scopes requested with the SMART access token.",
    )

    # --- Replay (`studystream replay`) -----------------------------------------------------------------
    topic_control: str = Field(
        "studystream.control",
        description="Compacted topic holding the state generation (Faust app version) every worker starts with.",
    )
    replay_timeout: float = Field(
        30.0, gt=0, description="Seconds `studystream replay` waits for each Kafka request before it gives up."
    )

    # --- Web view ----------------------------------------------------------------------------------
    web_port: int = Field(
        6066, ge=1, le=65535, description="Port of a worker's web view (each worker on a host needs its own)."
    )
    web_token: SecretStr | None = Field(None, description="Bearer token required by the web view and API.")
    web_basic_user: str = Field("", description="User name accepted by the web view with HTTP basic auth.")
    web_basic_password: SecretStr | None = Field(
        None, description="Password accepted with `web_basic_user`; basic auth is off while either is empty."
    )
    web_auth_disabled: bool = Field(
        False,
        description="Serve the web view and API without authentication (local development only); "
        "without it and with no token or basic credentials configured, every protected page answers 401.",
    )
    web_host: str = Field(
        "",
        description="Host name other workers use to reach this worker's web server (`--web-host`); "
        "empty: the machine's host name.",
    )
    web_show_patient_data: bool = Field(
        False, description="Show patient names, identifiers, birth dates and sex in the web view and API."
    )
    web_refresh_seconds: int = Field(5, ge=0, description="Seconds between auto-refreshes of the web pages; 0: off.")
    web_dlq_keep: int = Field(50, ge=1, le=10_000, description="Recent dead letters `/api/dlq` returns.")
    web_study_list_limit: int = Field(
        500, ge=1, description="Most studies the study list shows (the most recently received first)."
    )
    web_instance_list_limit: int = Field(2000, ge=1, description="Most instances a study's detail page lists.")
    web_peer_timeout: float = Field(
        5.0, gt=0, description="Seconds a worker waits for another worker's answer when it lists every study."
    )

    # --- Local stack (`studystream stack`) ---------------------------------------------------------
    kafka_version: str = Field("4.1.1", description="Apache Kafka broker version the local stack fetches with Maven.")
    hapi_version: str = Field(
        "8.8.0", description="HAPI FHIR JPA server version the local stack builds from Maven Central."
    )
    hapi_java_home: Path | None = Field(None, description="JDK to run HAPI with (default: the `java` on PATH).")
    kafka_controller_port: int = Field(9093, ge=1, le=65535, description="KRaft controller port of the local broker.")
    kafka_heap: str = Field("512m", description="Maximum Java heap of the local Kafka broker.")
    hapi_heap: str = Field("1536m", description="Maximum Java heap of the local HAPI FHIR server.")
    stack_start_timeout: float = Field(300.0, gt=0, description="Seconds `stack up` waits for each service to answer.")
    stack_stop_timeout: float = Field(30.0, gt=0, description="Seconds `stack down` waits before it kills a service.")

    @field_validator("broker_url")
    @classmethod
    def _broker_has_scheme(cls, value: str) -> str:
        return value if "://" in value else f"kafka://{value}"

    @field_validator("fhir_default_timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        zone_of(value)  # ValueError: an unknown zone stops the start instead of rendering times in UTC
        return value.strip()

    @field_validator("fhir_patient_system_by_ae", "fhir_coding_systems")
    @classmethod
    def _values_are_uris(cls, value: dict[str, str]) -> dict[str, str]:
        for key, uri in value.items():
            if ":" not in uri or uri.strip() != uri:
                raise ValueError(f"{key!r}: {uri!r} is not a URI (e.g. urn:oid:1.2.3 or https://...)")
        return {key.strip(): uri for key, uri in value.items()}

    @field_validator("completeness_rules")
    @classmethod
    def _rules_parse(cls, value: str) -> str:
        return format_rules(parse_rules(value))  # ValueError names the rule at fault; kept in canonical form

    @field_validator("fhir_base_url")
    @classmethod
    def _fhir_no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @property
    def completeness_policy(self) -> CompletenessPolicy:
        """The completeness rules table with ``quiet_period`` for the sources no rule matches."""
        return CompletenessPolicy(parse_rules(self.completeness_rules), self.quiet_period)

    @property
    def bootstrap_servers(self) -> list[str]:
        """``broker_url`` as aiokafka's list of ``host:port``."""
        return [part.split("://", 1)[-1] for part in self.broker_url.replace(",", ";").split(";") if part]

    @property
    def kafka_port(self) -> int:
        """Port of the first bootstrap server: the port the local stack's broker listens on."""
        return int(self.bootstrap_servers[0].rsplit(":", 1)[1])

    @property
    def fhir_port(self) -> int:
        """Port of the FHIR base URL: the port the local stack's HAPI server listens on."""
        parts = urlsplit(self.fhir_base_url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def fhir_path(self) -> str:
        """Path of the FHIR base URL (``/fhir`` by default)."""
        return urlsplit(self.fhir_base_url).path or "/"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment and ``.env``."""
    return Settings()
