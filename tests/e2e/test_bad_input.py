"""Bad and unusual input through the real receiver into the running pipeline: each instance is stored
(and reaches FHIR) or refused with its DICOM status and a counted reason, and the pipeline keeps going."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import FileDataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
)
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification

from scu import synth
from scu.synth_catalog import PATIENTS
from tests.conftest import wait_for
from tests.e2e.conftest import E2E, studies_in
from tests.scp.test_receiver import _encoded, _send_raw

PRIVATE_SOP_CLASS = "1.2.826.0.1.3680043.10.1404.999.1"
SUCCESS, CANNOT_UNDERSTAND, DOES_NOT_MATCH_SOP_CLASS = 0x0000, 0xC210, 0xA900


def c_store_file(port: int, path: Path) -> int | None:
    """C-STORE of ``path``'s dataset bytes exactly as in the file, in the file's transfer syntax.

    Returns the status, or ``None`` when the receiver rejected the presentation context."""
    meta = dcmread(path, stop_before_pixels=True).file_meta
    ae = AE(ae_title="BADSCU")
    ae.add_requested_context(str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
    ae.add_requested_context(Verification)  # keeps the association up when the storage context is refused
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # the bytes on the wire are the file's, never re-encoded
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="STUDYSTREAM")
        assert assoc.is_established
        try:
            if all(c.abstract_syntax == Verification for c in assoc.accepted_contexts):
                return None
            return int(assoc.send_c_store(path).Status)
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


def one_instance(patient_index: int = 0) -> FileDataset:
    """A single-instance study with fresh UIDs of the catalogue patient ``patient_index``.

    synth picks a seed's patient as ``seed % len(PATIENTS)``; the rest of the seed is random."""
    seed = random.SystemRandom().randrange(2**40) * len(PATIENTS) + patient_index
    return synth.generate_studies(seed=seed)[0]


def write(ds: FileDataset, directory: Path, **kw: object) -> Path:
    return synth.write_dataset(ds, directory, **kw)  # type: ignore[arg-type]


def big_endian(directory: Path) -> Path:
    ds = one_instance()
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    path = directory / f"{ds.SOPInstanceUID}.dcm"
    dcmwrite(path, ds, implicit_vr=False, little_endian=False, force_encoding=True)
    return path


def compressed(directory: Path, syntax: str) -> Path:
    """Encapsulated pixel data with one made-up fragment: a receiver that stores as received needs no codec."""
    ds = one_instance()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(60)])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    path = directory / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("e2e", [{"workers": 1}], indirect=True)
def test_bad_input_corpus_gets_its_statuses_and_the_pipeline_keeps_publishing(e2e: E2E, tmp_path: Path) -> None:
    port = e2e.receiver.port
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    statuses: dict[str, int | None] = {}
    stored_files: dict[str, Path] = {}

    # Refused: the bytes cannot be parsed, or the UIDs the store path is made of are missing or malformed.
    good = one_instance()
    statuses["non_dicom"] = _send_raw(port, good.SOPClassUID, good.SOPInstanceUID, b"\x89PNG\r\n\x1a\n" * 64, tmp_path)
    payload = write(good, tmp_path / "whole").read_bytes()
    name_at = payload.index(b"\x10\x00\x10\x00PN")  # cut inside the PatientName value, as a dropped link would
    body_start = 144 + int.from_bytes(payload[140:144], "little")  # after preamble, DICM and the meta group
    statuses["truncated"] = _send_raw(
        port, good.SOPClassUID, good.SOPInstanceUID, payload[body_start : name_at + 10], tmp_path
    )
    missing = one_instance()
    del missing.StudyInstanceUID
    statuses["missing_study_uid"] = c_store_file(port, write_flat(missing, tmp_path / "missing"))
    invalid = one_instance()
    invalid.SeriesInstanceUID = "1.2.840..x/../../etc"
    statuses["invalid_series_uid"] = c_store_file(port, write_flat(invalid, tmp_path / "invalid"))
    mismatch = one_instance()
    other_class = CTImageStorage if mismatch.SOPClassUID == MRImageStorage else MRImageStorage
    statuses["sop_class_mismatch"] = _send_raw(  # the request says one class, the dataset another
        port, other_class, mismatch.SOPInstanceUID, _encoded(mismatch), tmp_path
    )
    private = one_instance()
    private.SOPClassUID = private.file_meta.MediaStorageSOPClassUID = PRIVATE_SOP_CLASS
    statuses["unknown_sop_class"] = c_store_file(port, write_flat(private, tmp_path / "private"))

    # Stored as received: every transfer syntax real senders use, and names in several character sets.
    stored_files["big_endian"] = big_endian(corpus)
    stored_files["deflated"] = write(one_instance(), corpus, transfer_syntax=DeflatedExplicitVRLittleEndian)
    huge = one_instance()
    huge.StudyDescription = "D" * 9_000_000  # legal in implicit VR (4-byte length); clipped to LO's 64 in the event
    stored_files["huge_description"] = write(huge, corpus, transfer_syntax=ImplicitVRLittleEndian)
    for name, syntax in (("jpeg2000", JPEG2000Lossless), ("jpeg_ls", JPEGLSLossless), ("rle", RLELossless)):
        stored_files[name] = compressed(corpus, syntax)
    non_ascii = {i: p for i, p in enumerate(PATIENTS) if p.charset}
    for index, patient in non_ascii.items():
        ds = one_instance(index)
        assert str(ds.PatientName) == patient.name.rstrip("=")
        stored_files[f"name_{'+'.join(c for c in patient.charset if c)}_{index}"] = write(ds, corpus)
    for case, path in stored_files.items():
        statuses[case] = c_store_file(port, path)

    print("\nstatuses:", {case: None if s is None else f"0x{s:04X}" for case, s in statuses.items()})
    assert statuses == {
        "non_dicom": CANNOT_UNDERSTAND,
        "truncated": CANNOT_UNDERSTAND,
        "missing_study_uid": DOES_NOT_MATCH_SOP_CLASS,
        "invalid_series_uid": DOES_NOT_MATCH_SOP_CLASS,
        "sop_class_mismatch": DOES_NOT_MATCH_SOP_CLASS,
        "unknown_sop_class": None,  # not a Storage SOP class the receiver knows: context rejected
        **dict.fromkeys(stored_files, SUCCESS),
    }
    metrics = e2e.receiver.metrics()
    counted = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'^studystream_receiver_failures_total\{reason="(\w+)"\} ([0-9.]+)', metrics, re.M)
    }
    assert sum(counted.values()) == 5.0, counted  # every refusal counted, by reason
    assert counted["unparseable"] >= 1 and counted["missing_uid"] >= 1, counted
    assert counted["malformed_uid"] == 1 and counted["sop_class_mismatch"] == 1, counted
    assert not [p for ds in (good, missing, mismatch) for p in e2e.receiver.storage.rglob(f"{ds.SOPInstanceUID}.dcm")]

    # The pipeline kept running: everything stored reaches FHIR, and so does a good study sent afterwards.
    after = synth.write_studies(tmp_path / "after", studies=1, series=2, instances=5)
    assert e2e.storescu(tmp_path / "after") == len(after)
    studies = studies_in([*stored_files.values(), *after])
    e2e.remember(studies)
    for headers in (missing, invalid, mismatch, private, good):
        e2e.sent_headers.append(headers)
    for study in studies.values():
        e2e.wait_study(study)
    events = wait_for(
        lambda: _events_by_sop(e2e) if len(_events_by_sop(e2e)) >= len(stored_files) + len(after) else None,
        30,
        what="an event per stored instance",
    )
    huge_study = studies_in([stored_files["huge_description"]])
    (on_fhir,) = e2e.fhir.studies(next(iter(huge_study)))
    assert on_fhir["description"] == "D" * 64
    for case, path in stored_files.items():
        ds = dcmread(path, stop_before_pixels=True)
        event = events[str(ds.SOPInstanceUID)]
        assert event.transfer_syntax_uid == str(ds.file_meta.TransferSyntaxUID), case
        assert event.patient_name == str(ds.PatientName), case
    acknowledged = {sop for s in studies.values() for sop in s.instances}
    e2e.assert_nothing_lost_nothing_duplicated(studies, len(statuses) + 1 + len(after), acknowledged, "bad input")
    e2e.assert_no_phi_in_logs()


def write_flat(ds: FileDataset, directory: Path) -> Path:
    """Write without the <study>/<series> directories (the UIDs may be missing or malformed)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "instance.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _events_by_sop(e2e: E2E) -> dict:
    from domain.events import decode_instance_event

    return {e.sop_instance_uid: e for e in (decode_instance_event(v) for _, v, _, _ in list(e2e.raw.messages))}
