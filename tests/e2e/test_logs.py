"""The logs of a real receiver and worker, in both formats (``STUDYSTREAM_LOG_FORMAT``): StudyStream's own
lines for each event (listening, association accepted and closed, study opened, ready, published, a
failure with its stage and reason), every line in the one format, no Faust or aiokafka INFO chatter,
and none of the sent patients' names, identifiers or birth dates anywhere."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from adapters.log_setup import LIBRARIES
from app.worker import READY_MESSAGE
from scu import synth
from tests.conftest import wait_for
from tests.e2e.conftest import E2E, studies_in

TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d (?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL) +"
    r"(?P<component>[a-z_]+)\[\d+\] .+$"
)
JSON_FIELDS = {"timestamp", "level", "component", "logger", "pid", "message"}
# What Faust, mode and aiokafka print at INFO: none of it may show by default.
FAUST_CHATTER = ("opening partition", "Subscription", "Subscribed to topic", "Highwater", "[^Worker]", "[^-App]")


def _unique() -> str:
    return uuid.uuid4().hex[:8].upper()


def _rewrite(path: Path, out: Path, **attributes: Any) -> Path:
    ds = dcmread(path)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.save_as(out, enforce_file_format=True)
    return out


def _records(path: Path, log_format: str) -> list[dict[str, Any]]:
    """Every line of ``path`` as (at least) level, component and message; fails on a line of another format."""
    records = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if log_format == "json":
            try:
                record = json.loads(line)
            except ValueError:
                pytest.fail(f"{path.name}:{number} is not JSON: {line[:300]!r}")
            assert isinstance(record, dict) and JSON_FIELDS <= set(record), f"{path.name}:{number}: {line[:300]}"
            assert isinstance(record["pid"], int) and record["timestamp"][:2] == "20"
        else:
            match = TEXT_LINE.match(line)
            assert match, f"{path.name}:{number} is not a StudyStream line: {line[:300]!r}"
            record = {"level": match["level"], "component": match["component"], "message": line}
        records.append(record)
    return records


def _sent(tmp_path: Path) -> tuple[list[Path], str, str]:
    """Study A (one patient, UTF-8 name, two instances) and study B (two patients: a conflict)."""
    files = synth.write_studies(tmp_path / "synth", studies=2, series=1, instances=2, modality="CT")
    by_study = studies_in(files)
    (a, b) = (list(study.paths) for study in by_study.values())
    sent = tmp_path / "sent"
    sent.mkdir()
    patient_a: dict[str, Any] = dict(
        SpecificCharacterSet="ISO_IR 192",
        PatientName="Quillfeather^Marigold^Ysolde=山田^花子",
        PatientID=f"LGA{_unique()}",
        IssuerOfPatientID="LOGHOSP",
        PatientBirthDate="19580417",
    )
    out = [_rewrite(path, sent / f"a{i}.dcm", **patient_a) for i, path in enumerate(a)]
    out.append(_rewrite(b[0], sent / "b0.dcm", PatientName="Varga^Ottilie", PatientID=f"LGB{_unique()}",
                        IssuerOfPatientID="LOGHOSP", PatientBirthDate="19441122"))  # fmt: skip
    out.append(_rewrite(b[1], sent / "b1.dcm", PatientName="Zebulon^Hartwig", PatientID=f"LGC{_unique()}",
                        IssuerOfPatientID="LOGHOSP", PatientBirthDate="19390305"))  # fmt: skip
    uids = [str(dcmread(path, stop_before_pixels=True).StudyInstanceUID) for path in (out[0], out[-1])]
    return out, uids[0], uids[1]


@pytest.mark.parametrize(
    "e2e",
    [{"workers": 1, "log_format": "text"}, {"workers": 1, "log_format": "json"}],
    indirect=True,
    ids=["text", "json"],
)
def test_receiver_and_worker_write_calm_lines_in_one_format_without_patient_data(e2e: E2E, tmp_path: Path) -> None:
    log_format = e2e.settings.log_format
    files, study_a, study_b = _sent(tmp_path)
    studies = studies_in(files)
    e2e.remember(studies)
    assert e2e.storescu(*files) == 4
    e2e.wait_study(studies[study_a])
    worker, receiver = e2e.workers[0], e2e.receiver
    wait_for(lambda: "published in" in worker.log() and "dead-lettered" in worker.log(), 120, what="both outcomes")
    wait_for(lambda: "closed: 4 stored" in receiver.log(), 30, what="the association's closing line")
    receiver.stop()
    worker.stop()

    e2e.assert_no_phi_in_logs()  # receiver, worker, storescu and RocksDB's own logs, in both formats
    receiver_lines, worker_lines = _records(receiver.log_path, log_format), _records(worker.log_path, log_format)
    for path, records in ((receiver.log_path, receiver_lines), (worker.log_path, worker_lines)):
        text = path.read_text(errors="replace")
        assert not [s for s in FAUST_CHATTER if s in text], f"library INFO in {path.name}"
        chatter = [r for r in records if r["component"] in LIBRARIES and r["level"] in ("DEBUG", "INFO")]
        assert chatter == [], f"library lines below WARNING in {path.name}: {chatter[:3]}"

    def messages(records: list[dict[str, Any]]) -> str:
        return "\n".join(str(r["message"]) for r in records)

    said = messages(receiver_lines)
    assert "listening on" in said and "association E2ESCU from 127.0.0.1 accepted" in said
    assert "association E2ESCU from 127.0.0.1 closed: 4 stored, 0 refused" in said
    said = messages(worker_lines)
    expected = [
        "worker starting",
        READY_MESSAGE,
        f"study {study_a} revision 1 opened",
        f"study {study_a} revision 1 ready: 1 series, 2 instances",
        f"study {study_a} revision 1 published in",
        "worker stopped",
    ]
    assert [line for line in expected if line not in said] == [], said[-3000:]
    assert re.search(rf"dead-lettered .*\(study {re.escape(study_b)}\) at \w+: patient_conflict", said), said[-3000:]
    assert {"aggregator", "uploader", "worker"} <= {r["component"] for r in worker_lines}
    assert {r["component"] for r in receiver_lines} - set(LIBRARIES) == {"receiver"}
    if log_format == "json":  # the events' fields, as fields
        (closed,) = [r for r in receiver_lines if "closed:" in r["message"]]
        assert (closed["stored"], closed["refused"], closed["calling_ae"]) == (4, 0, "E2ESCU") and closed["bytes"] > 0
        (published,) = [r for r in worker_lines if f"{study_a} revision 1 published" in r["message"]]
        assert (published["study_uid"], published["stage"], published["revision"]) == (study_a, "uploader", 1)
        assert published["duration_ms"] >= 0 and published["component"] == "uploader"
        (conflict,) = [r for r in worker_lines if r.get("reason") == "patient_conflict"]
        assert conflict["study_uid"] == study_b and conflict["level"] == "WARNING" and conflict["stage"]
