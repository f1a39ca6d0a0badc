"""End-to-end benchmark: DICOM in (dcmtk storescu, one association per study) → receiver → Kafka →
worker(s) → HAPI; throughput and the latency from a study's last acknowledged instance to its
ImagingStudy being readable on the FHIR server with every instance.

    .venv/bin/python bench/bench_e2e.py [--studies 20] [--series 2] [--instances 10] [--quiet-period 2]

Runs on the stack in settings (`studystream stack up`) with topics, state and storage of its own. A
study's "readable" moment comes from polling HAPI (one search for every pending study, no cache).
Goal (issue 8): latency p95 <= quiet period + 2 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.settings import Settings  # noqa: E402
from scu import synth  # noqa: E402
from tests.e2e.conftest import E2E, start_e2e, stop_e2e, studies_in  # noqa: E402
from tests.scp.conftest import DCMTK_ENV, STORESCU  # noqa: E402

LATENCY_SLACK = 2.0  # the goal: p95 <= quiet period + this


@dataclass
class E2EResult:
    quiet_period: float
    workers: int
    studies: int
    instances: int
    megabytes: float
    send_seconds: float  # first association opened → last instance acknowledged
    total_seconds: float  # first association opened → last ImagingStudy readable
    latencies: dict[str, float] = field(default_factory=dict)  # study UID → seconds
    acked_at: dict[str, float] = field(default_factory=dict)  # study UID → seconds since start
    readable_at: dict[str, float] = field(default_factory=dict)
    failed_sends: int = 0

    @property
    def goal(self) -> float:
        return self.quiet_period + LATENCY_SLACK

    def percentile(self, q: float) -> float:
        values = sorted(self.latencies.values())
        if not values:
            return float("inf")
        if len(values) == 1:
            return values[0]
        return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]

    @property
    def receive_rate(self) -> float:
        return self.instances / self.send_seconds

    @property
    def end_to_end_rate(self) -> float:
        return self.instances / self.total_seconds


def _send_study(directory: Path, port: int, ae_title: str) -> bool:
    done = subprocess.run(
        [
            STORESCU,
            "-aet",
            "BENCHSCU",
            "-aec",
            ae_title,
            "+sd",
            "+r",
            "-to",
            "30",
            "127.0.0.1",
            str(port),
            str(directory),
        ],
        env=DCMTK_ENV,
        capture_output=True,
        timeout=300,
        check=False,
    )
    return done.returncode == 0


def _poll_readable(e2e: E2E, expected: dict[str, int], readable: dict[str, float], t0: float, stop: threading.Event):
    """Record when each study's ImagingStudy lists all its instances: one search for every pending study."""
    client = httpx.Client(base_url=e2e.fhir.fhir_url, headers={"Cache-Control": "no-cache"}, timeout=30)
    try:
        while not stop.is_set() and len(readable) < len(expected):
            pending = [uid for uid in expected if uid not in readable]
            identifiers = ",".join(f"urn:dicom:uid|urn:oid:{uid}" for uid in pending[:40])
            response = client.get(
                "ImagingStudy",
                params={"identifier": identifiers, "_elements": "identifier,numberOfInstances", "_count": "100"},
            )
            now = time.perf_counter() - t0
            for entry in response.json().get("entry") or ():
                resource = entry["resource"]
                for identifier in resource.get("identifier", []):
                    uid = identifier.get("value", "").removeprefix("urn:oid:")
                    if uid in expected and resource.get("numberOfInstances") == expected[uid]:
                        readable.setdefault(uid, now)
            stop.wait(0.1)
    finally:
        client.close()


def run(
    studies: int, series: int, instances: int, quiet_period: float, workers: int, parallel: int, timeout: float
) -> E2EResult:
    base = Settings()
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp_name:
        tmp = Path(tmp_name)
        files = synth.write_studies(tmp / "in", studies=studies, series=series, instances=instances)
        sent = studies_in(files)
        megabytes = sum(p.stat().st_size for p in files) / 1e6
        # The FHIR server directly, not through the test suite's switchable proxy.
        e2e = start_e2e(
            base,
            base,
            tmp / "pipeline",
            workers=workers,
            fhir_base_url=base.fhir_base_url,
            quiet_period=quiet_period,
            aggregator_check_interval=0.1,
        )
        try:
            expected = {uid: len(study.instances) for uid, study in sent.items()}
            readable: dict[str, float] = {}
            acked: dict[str, float] = {}
            stop = threading.Event()
            t0 = time.perf_counter()
            poller = threading.Thread(target=_poll_readable, args=(e2e, expected, readable, t0, stop), daemon=True)
            poller.start()
            failed = 0

            def send(uid: str) -> None:
                nonlocal failed
                if not _send_study(tmp / "in" / uid, e2e.receiver.port, e2e.settings.ae_title):
                    failed += 1
                acked[uid] = time.perf_counter() - t0

            with ThreadPoolExecutor(max_workers=parallel) as pool:
                list(pool.map(send, sent))
            send_seconds = max(acked.values())
            poller.join(timeout)
            stop.set()
            total = max(readable.values()) if len(readable) == len(expected) else float("inf")
            return E2EResult(
                quiet_period=quiet_period,
                workers=workers,
                studies=studies,
                instances=len(files),
                megabytes=megabytes,
                send_seconds=send_seconds,
                total_seconds=total,
                latencies={uid: readable[uid] - acked[uid] for uid in readable},
                acked_at=acked,
                readable_at=readable,
                failed_sends=failed,
            )
        finally:
            stop_e2e(e2e)


def summary_lines(r: E2EResult) -> list[str]:
    p50, p95 = r.percentile(50), r.percentile(95)
    return [
        f"{r.studies} studies, {r.instances} instances ({r.megabytes:.1f} MB), {r.workers} worker(s), "
        f"quiet period {r.quiet_period:g} s, failed sends {r.failed_sends}, "
        f"studies readable {len(r.latencies)}/{r.studies}",
        f"  receive throughput    : {r.receive_rate:8.1f} inst/s ({r.megabytes / r.send_seconds:.1f} MB/s)",
        f"  end-to-end throughput : {r.end_to_end_rate:8.1f} inst/s (first send → last ImagingStudy readable)",
        f"  latency last ack → ImagingStudy readable: p50 {p50:.2f} s, p95 {p95:.2f} s, max "
        f"{max(r.latencies.values(), default=float('inf')):.2f} s",
        f"  p95 / goal = {p95:.2f} / {r.goal:.2f} s = {p95 / r.goal:.2f} (goal <= 1.00: p95 <= quiet period + "
        f"{LATENCY_SLACK:g} s): {'MET' if p95 <= r.goal else 'NOT MET'}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--series", type=int, default=2)
    parser.add_argument("--instances", type=int, default=10, help="instances per series")
    parser.add_argument("--quiet-period", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--parallel", type=int, default=2, help="studies sent at once (one association each)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the last study")
    args = parser.parse_args(argv)
    result = run(
        args.studies, args.series, args.instances, args.quiet_period, args.workers, args.parallel, args.timeout
    )
    print("\n".join(summary_lines(result)))
    return 0 if len(result.latencies) == result.studies and result.failed_sends == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
