"""Prometheus metrics of the receiver and its ``/health`` endpoint.

Each receiving process owns a private registry (no module globals), served on its own port.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger(f"studystream.{__name__}")


class ReceiverMetrics:
    """The receiver's Prometheus metrics (one registry per receiving process): stores, then publishing."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.instances_stored = Counter(
            "studystream_receiver_instances_stored", "Instances stored", ["outcome"], registry=self.registry
        )
        self.bytes_stored = Counter(
            "studystream_receiver_bytes_stored", "Bytes of stored instances", registry=self.registry
        )
        self.failures = Counter(
            "studystream_receiver_failures", "C-STOREs refused or failed, by reason", ["reason"], registry=self.registry
        )
        self.associations_accepted = Counter(
            "studystream_receiver_associations_accepted", "Associations accepted", registry=self.registry
        )
        self.associations_aborted = Counter(
            "studystream_receiver_associations_aborted",
            "Associations aborted, by who (peer, protocol_error)",
            ["reason"],
            registry=self.registry,
        )
        self.associations_rejected = Counter(
            "studystream_receiver_associations_rejected", "Associations rejected", ["reason"], registry=self.registry
        )
        self.store_seconds = Histogram(
            "studystream_receiver_store_seconds",
            "Time from the complete C-STORE request to the durable outbox entry",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
            registry=self.registry,
        )
        self._publisher_metrics()
        self._stow_metrics()
        self._mpps_metrics()

    def _mpps_metrics(self) -> None:
        self.mpps_requests = Counter(
            "studystream_receiver_mpps_requests",
            "Modality Performed Procedure Step N-CREATE and N-SET requests answered, by operation and DIMSE status",
            ["operation", "status"],
            registry=self.registry,
        )
        self.mpps_steps_ended = Counter(
            "studystream_receiver_mpps_steps_ended",
            "Performed Procedure Steps set COMPLETED or DISCONTINUED (each one record on imaging.raw)",
            ["status"],
            registry=self.registry,
        )

    def _stow_metrics(self) -> None:
        self.stow_requests = Counter(
            "studystream_receiver_stow_requests",
            "DICOMweb STOW-RS requests answered, by HTTP status",
            ["status"],
            registry=self.registry,
        )
        self.stow_instances = Counter(
            "studystream_receiver_stow_instances",
            "Parts of STOW-RS requests, by outcome: stored, or the failure reason",
            ["outcome"],
            registry=self.registry,
        )
        self.stow_seconds = Histogram(
            "studystream_receiver_stow_seconds",
            "Time from a STOW-RS request's start to its answer (body read, every instance durable)",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120),
            registry=self.registry,
        )

    def _publisher_metrics(self) -> None:
        self.outbox_depth = Gauge(
            "studystream_receiver_outbox_depth", "Events not yet confirmed by Kafka", registry=self.registry
        )
        self.published = Counter(
            "studystream_receiver_events_published", "Events confirmed by Kafka", registry=self.registry
        )
        self.quarantined = Counter(
            "studystream_receiver_events_quarantined",
            "Events the broker refused for good, moved to the outbox's quarantine",
            registry=self.registry,
        )
        self.quarantine_depth = Gauge(
            "studystream_receiver_quarantine_depth", "Events in the outbox's quarantine", registry=self.registry
        )
        self.publish_unconfirmed = Counter(
            "studystream_receiver_publish_unconfirmed",
            "Events sent whose acknowledgement did not come in time: sent again (at most a duplicate each)",
            registry=self.registry,
        )
        self.publish_errors = Counter(
            "studystream_receiver_publish_errors", "Failed publish rounds", registry=self.registry
        )
        self.publish_latency = Histogram(
            "studystream_receiver_publish_latency_seconds",
            "Time from the outbox commit to the broker's acknowledgement",
            buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600),
            registry=self.registry,
        )
        self.commitments = Counter(
            "studystream_receiver_storage_commitments",
            "Storage Commitment requests, by outcome (committed, some_failed, refused)",
            ["outcome"],
            registry=self.registry,
        )
        self.broker_connected = Gauge(
            "studystream_receiver_broker_connected",
            "1 while the publisher has a working producer",
            registry=self.registry,
        )


def start_http(
    metrics: ReceiverMetrics, host: str, port: int, health: Callable[[], dict[str, object]]
) -> ThreadingHTTPServer:
    """Serve ``/metrics`` and ``/health`` in a daemon thread; the caller shuts the server down."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/metrics"):
                body, status, content_type = generate_latest(metrics.registry), 200, CONTENT_TYPE_LATEST
            elif self.path.startswith("/health"):
                report = health()
                body, status, content_type = orjson.dumps(report), 200 if report.get("ok") else 503, "application/json"
            else:
                body, status, content_type = b"not found\n", 404, "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("metrics http: " + format, *args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="receiver-metrics", daemon=True).start()
    return server
