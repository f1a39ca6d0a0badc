"""End-to-end kit: the real receiver, two real workers and HAPI (behind a switchable proxy), on topics,
state, storage and bundles directories of the test's own; senders (dcmtk storescu, `studystream send`)
whose output goes to log files; the figures every test prints; the checks every test ends with
(0 acknowledged instances lost, 0 duplicate FHIR resources, no patient data in any log).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from pydicom.charset import convert_encodings, encode_string
from pydicom.dataset import Dataset

from app.settings import Settings
from domain.events import InstanceEvent, decode_raw_record
from domain.fhir_mapping import bundle_file_name
from domain.patient import issuer_system
from tests.aggregator.conftest import TopicCollector, Worker
from tests.conftest import ROOT, create_test_topics, pipeline_settings, worker_env
from tests.scp.conftest import DCMTK_ENV, STORESCU, Receiver
from tests.uploader.conftest import Pipeline, SwitchableProxy

QUIET_PERIOD = 1.0
PUBLISH_TIMEOUT = 180.0  # a 500-instance bundle on a cold HAPI, on a loaded 2-core machine
STORESCU_ARGS = (STORESCU, "-v", "-aet", "E2ESCU", "-nh", "+sd", "+r", "-to", "30")
STUDYSTREAM = str(Path(sys.executable).with_name("studystream"))


# --- What was sent -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SentStudy:
    """One study as written to disk by the test: its instances per series and its patient."""

    uid: str
    series: dict[str, set[str]]  # SeriesInstanceUID → SOP Instance UIDs
    patient_id: str
    patient_issuer: str
    headers: tuple[Dataset, ...]  # one header per file (pixel data not read)
    paths: tuple[Path, ...]  # the files, in the order given

    @property
    def instances(self) -> set[str]:
        return {sop for sops in self.series.values() for sop in sops}

    def halves(self) -> tuple[list[Path], list[Path]]:
        """The files split in two, every series contributing to both halves."""
        return list(self.paths[::2]), list(self.paths[1::2])


def studies_in(paths: Iterable[Path]) -> dict[str, SentStudy]:
    """Group DICOM files by study (headers only)."""
    grouped: dict[str, list[Dataset]] = {}
    files: dict[str, list[Path]] = {}
    for path in paths:
        ds = dcmread(path, stop_before_pixels=True)
        grouped.setdefault(str(ds.StudyInstanceUID), []).append(ds)
        files.setdefault(str(ds.StudyInstanceUID), []).append(Path(path))
    studies = {}
    for uid, headers in grouped.items():
        series: dict[str, set[str]] = {}
        for ds in headers:
            series.setdefault(str(ds.SeriesInstanceUID), set()).add(str(ds.SOPInstanceUID))
        first = headers[0]
        studies[uid] = SentStudy(
            uid,
            series,
            str(first.PatientID),
            str(first.get("IssuerOfPatientID", "")),
            tuple(headers),
            tuple(files[uid]),
        )
    return studies


def acknowledged_by_send(summary: dict[str, Any], paths: Iterable[Path]) -> set[str]:
    """SOP Instance UIDs of ``paths`` that `studystream send` did not report as failed."""
    failed = {Path(f["path"]).resolve() for f in summary["failed_files"]}
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths if p.resolve() not in failed}


def phi_terms(headers: Iterable[Dataset]) -> set[bytes]:
    """Byte strings that must appear in no log: patient ID, birth date, the name and each of its
    components, in UTF-8, in the dataset's own character set and as Python escapes."""
    terms: set[bytes] = set()
    for ds in headers:
        texts = {str(ds.PatientID), str(ds.get("PatientBirthDate", ""))}
        name = str(ds.PatientName)
        texts.add(name)
        for group in name.split("="):
            texts.add(group)
            texts.update(group.split("^"))
        declared = ds.get("SpecificCharacterSet") or "ISO_IR 6"
        charsets = convert_encodings([declared] if isinstance(declared, str) else list(declared))
        for text in texts:
            if len(text) < 3 and text.isascii():  # initials would match anything; 2 ideographs are a name
                continue
            terms.add(text.encode())
            terms.add(text.encode("unicode_escape"))
            try:
                terms.add(encode_string(text, charsets))
            except (LookupError, UnicodeError):
                pass
    return {t for t in terms if len(t) >= 2}


def phi_hits(logs: Iterable[Path], terms: set[bytes]) -> list[str]:
    """``file: term`` for every patient data term found in any of ``logs``."""
    hits = []
    for path in logs:
        data = path.read_bytes()
        hits.extend(f"{path.name}: {term!r}" for term in terms if term in data)
    return hits


# --- The pipeline --------------------------------------------------------------------------------


@dataclass
class E2E:
    """Receiver → imaging.raw → two workers (aggregator + uploader) → HAPI, all on this test's topics."""

    settings: Settings
    tmp: Path
    fhir: Pipeline  # HAPI queries (search, wait_study) and the proxy in front of it
    receiver: Receiver
    workers: list[Worker]
    raw: TopicCollector
    sent_headers: list[Dataset] = field(default_factory=list)

    @property
    def logs(self) -> Path:
        return self.tmp / "logs"

    # --- senders ---

    def storescu(self, *paths: Path, name: str = "storescu") -> int:
        """Send every file under ``paths`` with dcmtk; returns the instances acknowledged with success."""
        log = self.logs / f"{name}.log"
        with log.open("ab") as out:
            subprocess.run(
                [
                    *STORESCU_ARGS,
                    "-aec",
                    self.settings.ae_title,
                    "127.0.0.1",
                    str(self.receiver.port),
                    *map(str, paths),
                ],
                env=DCMTK_ENV,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=300,
                check=False,
            )
        return log.read_text(errors="replace").count("Received Store Response (Success)")

    def send(self, *paths: Path, name: str = "send", retries: int = 0, options: tuple[str, ...] = ()) -> dict[str, Any]:
        """`studystream send --json [options]`; returns its summary (``stored`` = instances acknowledged)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("STUDYSTREAM_")}
        env.update(STUDYSTREAM_SENDER_RETRY_BACKOFF="0.2")
        with (self.logs / f"{name}.log").open("ab") as err:
            done = subprocess.run(
                [STUDYSTREAM, "send", "--json", "--no-progress", "--retries", str(retries), *options]
                + ["--host", "127.0.0.1", "--port", str(self.receiver.port), "--called-ae", self.settings.ae_title]
                + [str(p) for p in paths],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=err,
                timeout=300,
                check=False,
            )
        (self.logs / f"{name}.json").write_bytes(done.stdout)
        return json.loads(done.stdout)

    def remember(self, studies: dict[str, SentStudy]) -> None:
        for study in studies.values():
            self.sent_headers.extend(study.headers)

    # --- what came out ---

    def published_sops(self) -> set[str]:
        """SOP Instance UIDs with at least one event on this pipeline's imaging.raw."""
        records = (decode_raw_record(value) for _, value, _, _ in list(self.raw.messages))
        return {r.sop_instance_uid for r in records if isinstance(r, InstanceEvent)}

    def wait_study(self, study: SentStudy, timeout: float = PUBLISH_TIMEOUT) -> dict[str, Any]:
        """The study's ImagingStudy once it lists every sent instance."""
        return self.fhir.wait_study(study.uid, instances=len(study.instances), timeout=timeout)

    def patient_identifier(self, study: SentStudy) -> tuple[str, str]:
        system = issuer_system(
            study.patient_issuer, self.settings.fhir_default_patient_system, self.settings.fhir_local_issuer_prefix
        )
        return system, study.patient_id

    def web_studies(self) -> dict[str, dict[str, Any]]:
        """/api/studies of the first live worker (it merges every worker's rows)."""
        worker = next(w for w in self.workers if not w.exited())
        response = httpx.get(f"http://127.0.0.1:{worker.web_port}/api/studies", timeout=15)
        response.raise_for_status()
        return {row["study_uid"]: row for row in response.json()["studies"]}

    def local_studies(self, worker: Worker) -> set[str]:
        """Study UIDs on ``worker``'s own partitions."""
        url = f"http://127.0.0.1:{worker.web_port}/api/studies?scope=local"
        response = httpx.get(url, timeout=15)
        response.raise_for_status()
        return {row["study_uid"] for row in response.json()["studies"]}

    def worker_metric(self, path: str, name: str, label: str, value: str) -> float:
        """A counter summed over the live workers, e.g. ("/metrics", "studystream_aggregator_messages_total",
        "outcome", "duplicates") or ("/uploader/metrics", "studystream_uploader_attempts_total", "verdict", "retry")."""
        total = 0.0
        for worker in self.workers:
            if worker.exited():
                continue
            text = httpx.get(f"http://127.0.0.1:{worker.web_port}{path}", timeout=15).text
            match = re.search(rf'^{name}{{{label}="{value}"}} ([0-9.e+]+)$', text, re.M)
            total += float(match.group(1)) if match else 0.0
        return total

    def wait_all(self, studies: dict[str, SentStudy], timeout: float = PUBLISH_TIMEOUT) -> None:
        """Every study on FHIR with all its instances; on timeout, says where each study got stuck."""
        try:
            for study in studies.values():
                self.wait_study(study, timeout=timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.diagnosis(studies)}") from None

    def diagnosis(self, studies: dict[str, SentStudy]) -> str:
        rows = self.web_studies()
        published = self.published_sops()
        lines = []
        for uid, study in studies.items():
            row = rows.get(uid, {})
            on_fhir = [r.get("numberOfInstances") for r in self.fhir.studies(uid)]
            lines.append(
                f"{uid}: sent {len(study.instances)}, on imaging.raw {len(study.instances & published)}, "
                f"worker row {row.get('status')} r{row.get('revision')} {row.get('instance_count')} inst, "
                f"fhir {row.get('fhir')}, FHIR {on_fhir}"
            )
        return "\n".join(lines)

    def bundle_path(self, study_uid: str, revision: int) -> Path:
        return self.settings.bundles_dir / bundle_file_name(study_uid, (1, revision))

    # --- the verdict ---

    def figures(self, studies: dict[str, SentStudy], sent: int, acknowledged: set[str], label: str) -> dict[str, int]:
        """Print and return: sent, acknowledged, published, on FHIR, lost, duplicates."""
        published = self.published_sops()
        on_fhir_instances: set[str] = set()
        studies_on_fhir = duplicates = 0
        for study in studies.values():
            found = self.fhir.studies(study.uid)
            studies_on_fhir += bool(found)
            duplicates += max(0, len(found) - 1)
            for resource in found:
                for series in resource.get("series", []):
                    on_fhir_instances.update(i["uid"] for i in series.get("instance", []))
        for system, value in {self.patient_identifier(s) for s in studies.values()}:
            duplicates += max(0, len(self.fhir.patients(system, value)) - 1)
        numbers = {
            "sent": sent,
            "acknowledged": len(acknowledged),
            "published": len(published & {sop for s in studies.values() for sop in s.instances}),
            "studies": len(studies),
            "studies_on_fhir": studies_on_fhir,
            "lost": len(acknowledged - on_fhir_instances),
            "duplicates": duplicates,
        }
        print(f"\n[{label}] " + ", ".join(f"{k}={v}" for k, v in numbers.items()))
        return numbers

    def assert_nothing_lost_nothing_duplicated(
        self, studies: dict[str, SentStudy], sent: int, acknowledged: set[str], label: str
    ) -> dict[str, int]:
        numbers = self.figures(studies, sent, acknowledged, label)
        assert numbers["lost"] == 0, f"{numbers['lost']} acknowledged instances are not on the FHIR server"
        assert numbers["duplicates"] == 0, f"{numbers['duplicates']} duplicate FHIR resources"
        return numbers

    def log_files(self) -> list[Path]:
        """Receiver, workers, storescu, `studystream send` and RocksDB's own info logs (``LOG``).

        The table directories' numbered ``*.log`` files are RocksDB write-ahead logs: table data (which
        does hold the patient), not logs."""
        state = self.settings.state_dir.resolve()
        ours = [p for p in self.tmp.rglob("*.log") if state not in p.resolve().parents]
        return sorted(ours + [p for p in state.rglob("LOG*") if p.is_file()])

    def assert_no_phi_in_logs(self) -> None:
        """Every log of this test (receiver, workers, senders) is free of the sent patients' data."""
        assert self.sent_headers, "nothing was sent, so the check would prove nothing"
        terms = phi_terms(self.sent_headers)
        logs = self.log_files()
        assert len(logs) >= 3, f"too few logs collected: {logs}"
        hits = phi_hits(logs, terms)
        print(f"PHI check: {len(terms)} terms in {len(logs)} logs ({sum(p.stat().st_size for p in logs)} bytes)")
        assert not hits, "patient data in logs:\n" + "\n".join(hits[:20])


# --- Fixtures ------------------------------------------------------------------------------------


def e2e_settings(kafka: Settings, fhir_base_url: str, tmp: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        fhir_base_url=fhir_base_url,
        fhir_timeout=10.0,
        quiet_period=QUIET_PERIOD,
        uploader_backoff_initial=0.2,
        uploader_backoff_max=1.0,
        uploader_inline_budget=3.0,
        uploader_retry_hold_max=1.0,
        web_auth_disabled=True,
        web_refresh_seconds=0,
    )
    values.update(overrides)
    return pipeline_settings(kafka, "e2e", tmp, **values)


def start_e2e(kafka: Settings, fhir: Settings, tmp: Path, workers: int = 2, **overrides: Any) -> E2E:
    """Create topics, start the receiver and ``workers`` workers; the caller must ``stop_e2e``."""
    (tmp / "logs").mkdir(parents=True, exist_ok=True)
    hapi = httpx.URL(fhir.fhir_base_url)
    proxy = SwitchableProxy(hapi.host, hapi.port or 80)
    # A caller that names fhir_base_url (the benchmark) talks to the server directly, not through the proxy.
    fhir_base_url = overrides.pop("fhir_base_url", f"http://127.0.0.1:{proxy.port}{hapi.path}")
    settings = e2e_settings(kafka, fhir_base_url, tmp, **overrides)
    names = [settings.topic_raw, settings.topic_ready, settings.topic_dlq, settings.topic_retry]
    asyncio.run(create_test_topics(settings, names))
    env = worker_env(settings)
    started = [Worker(env, tmp / "logs", f"worker{i + 1}").start() for i in range(workers)]
    receiver = Receiver(root=tmp / "receiver", topic=settings.topic_raw, broker_url=settings.broker_url)
    receiver.root.mkdir(parents=True, exist_ok=True)
    receiver.start(**{name: value for name, value in env.items() if name.startswith("STUDYSTREAM_LOG_")})
    raw = TopicCollector(settings, settings.topic_raw)
    dlq = TopicCollector(settings, settings.topic_dlq)
    e2e = E2E(settings, tmp, Pipeline(settings, fhir.fhir_base_url, started[0], proxy, dlq), receiver, started, raw)
    for worker in started:
        worker.wait_started()
    return e2e


def stop_e2e(e2e: E2E) -> None:
    e2e.receiver.stop()
    for worker in e2e.workers:
        worker.stop()
    e2e.raw.close()
    e2e.fhir.dlq.close()
    e2e.fhir.proxy.close()


@pytest.fixture
def e2e(kafka: Settings, fhir: Settings, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[E2E]:
    """The whole pipeline; ``@pytest.mark.parametrize("e2e", [{"quiet_period": 4.0}], indirect=True)``
    overrides settings, ``{"workers": 1}`` starts one worker instead of two (faster, for the tests whose
    fault does not involve the workers)."""
    pipeline = start_e2e(kafka, fhir, tmp_path, **getattr(request, "param", {}))
    try:
        yield pipeline
    finally:
        stop_e2e(pipeline)
