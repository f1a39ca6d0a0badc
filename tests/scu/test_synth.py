"""Synthetic studies: valid DICOM that pydicom reads back, with the attributes the pipeline needs."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import UID

from scu import synth


def test_written_studies_read_back_with_realistic_attributes(tmp_path: Path) -> None:
    paths = synth.write_studies(tmp_path, studies=12, series=2, instances=3, seed=5)
    assert len(paths) == 12 * 2 * 3
    datasets = [pydicom.dcmread(p) for p in paths]
    assert len({ds.StudyInstanceUID for ds in datasets}) == 12
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 24
    assert len({ds.SOPInstanceUID for ds in datasets}) == 72
    assert {ds.Modality for ds in datasets} == {"CT", "MR", "CR", "DX", "US"}
    for ds in datasets:
        for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
            assert UID(uid).is_valid
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.AccessionNumber and ds.IssuerOfPatientID and ds.PatientID and ds.StudyDate
        issuer = ds.IssuerOfAccessionNumberSequence[0]
        assert issuer.LocalNamespaceEntityID and issuer.UniversalEntityIDType == "ISO"
        assert ds.pixel_array.shape == (64, 64)


def test_non_ascii_names_use_their_character_sets(tmp_path: Path) -> None:
    paths = synth.write_studies(tmp_path, studies=12, seed=0)
    by_charset = {}
    for path in paths:
        ds = pydicom.dcmread(path)
        charset = ds.get("SpecificCharacterSet", "")
        by_charset[charset if isinstance(charset, str) else "\\".join(charset)] = (ds.PatientName, path.read_bytes())
    assert set(by_charset) == {"", "ISO_IR 100", "ISO_IR 192", "GB18030", "\\ISO 2022 IR 87"}
    latin1_name, latin1_bytes = by_charset["ISO_IR 100"]
    assert any(ch in str(latin1_name) for ch in "üèÅØ")
    assert str(latin1_name).encode("latin-1") in latin1_bytes
    japanese, japanese_bytes = by_charset["\\ISO 2022 IR 87"]
    assert japanese.ideographic and japanese.phonetic
    assert b"\x1b$B" in japanese_bytes  # ISO 2022 escape to JIS X 0208 in the encoded name
    chinese, chinese_bytes = by_charset["GB18030"]
    assert chinese.ideographic == "王^小东"
    assert "王".encode("gb18030") in chinese_bytes


def test_same_seed_gives_identical_files_and_no_seed_fresh_uids(tmp_path: Path) -> None:
    first = synth.write_studies(tmp_path / "a", studies=2, instances=2, seed=42)
    second = synth.write_studies(tmp_path / "b", studies=2, instances=2, seed=42)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    fresh = synth.generate_studies(studies=2, instances=2)
    assert {ds.SOPInstanceUID for ds in fresh}.isdisjoint(p.stem for p in first)


@pytest.mark.parametrize(("size", "modality", "shape"), [("ct", "CT", (512, 512)), ("mr", "MR", (256, 256))])
def test_sizes_fix_image_geometry_and_modality(size: str, modality: str, shape: tuple[int, int]) -> None:
    ds = synth.generate_studies(size=size)[0]
    assert ds.Modality == modality
    assert ds.pixel_array.shape == shape


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="size"):
        synth.generate_studies(size="huge")
    with pytest.raises(ValueError, match="at least 1"):
        synth.generate_studies(studies=0)
