"""The header parsed from the bytes kept in memory is what dcmread of the staged file gives, or nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from domain.dicom_event import parse_defect
from scp.cstore import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION, file_meta
from scp.header import DEFER_SIZE, parse_head
from tests.scp.conftest import dataset_bytes, make_dataset, write_dataset


def _staged(ds: Dataset, syntax: str, tmp_path: Path) -> bytes:
    """The bytes of a staged file as the receiver writes it: its own File Meta, then the dataset as sent."""
    ds.file_meta.TransferSyntaxUID = syntax
    body = dataset_bytes(write_dataset(ds, tmp_path / "sent"))
    meta = file_meta(ds.SOPClassUID, ds.SOPInstanceUID, syntax, IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION)
    return b"\x00" * 128 + b"DICM" + meta + body


def _with_sequences(pixels: int = 8) -> Dataset:
    ds = make_dataset(pixels=pixels)
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "113000", "DCM", "Of Interest"
    ds.ConceptNameCodeSequence = [code]
    reference = Dataset()
    reference.StudyInstanceUID = ds.StudyInstanceUID
    reference.ReferencedSeriesSequence = [Dataset()]
    reference.ReferencedSeriesSequence[0].SeriesInstanceUID = ds.SeriesInstanceUID
    ds.CurrentRequestedProcedureEvidenceSequence = [reference]
    return ds


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_a_whole_file_in_memory_parses_as_dcmread_reads_it(syntax: str, tmp_path: Path) -> None:
    data = _staged(_with_sequences(), syntax, tmp_path)
    path = tmp_path / "staged.dcm"
    path.write_bytes(data)
    expected = dcmread(path, stop_before_pixels=True, defer_size=DEFER_SIZE)
    parsed = parse_head(data, syntax, len(data))
    assert parsed is not None
    assert parsed == expected and parsed.original_encoding == expected.original_encoding
    assert parsed.ConceptNameCodeSequence[0].CodeValue == "113000"
    evidence = parsed.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.ReferencedSeriesSequence[0].SeriesInstanceUID == expected.SeriesInstanceUID
    assert parse_defect(parsed, syntax, len(data)) == parse_defect(expected, syntax, len(data))
    assert "PixelData" not in parsed


def test_a_head_that_reaches_the_pixel_data_is_enough_and_one_that_does_not_is_not(tmp_path: Path) -> None:
    data = _staged(make_dataset(pixels=256), ExplicitVRLittleEndian, tmp_path)
    pixel_at = data.index(b"\xe0\x7f\x10\x00")
    expected = dcmread(_write(tmp_path, data), stop_before_pixels=True, defer_size=DEFER_SIZE)
    assert parse_head(data[: pixel_at + 64], ExplicitVRLittleEndian, len(data)) == expected
    assert parse_head(data[: pixel_at - 10], ExplicitVRLittleEndian, len(data)) is None  # header cut: read the file
    assert parse_head(data[: pixel_at + 4], ExplicitVRLittleEndian, len(data)) is None  # pixel header cut


def test_what_it_does_not_parse_is_left_to_dcmread(tmp_path: Path) -> None:
    data = _staged(make_dataset(), ExplicitVRLittleEndian, tmp_path)
    assert parse_head(data, ExplicitVRBigEndian, len(data)) is None
    assert parse_head(data, "1.2.840.10008.1.2.1.99", len(data)) is None  # deflated
    assert parse_head(b"\x00" * 200, ExplicitVRLittleEndian, 200) is None  # no DICM
    meta_end = 144 + int.from_bytes(data[140:144], "little")  # after the File Meta group
    with_group_2 = data[:meta_end] + b"\x02\x00\x10\x00UI\x02\x001\x00" + data[meta_end:]
    assert parse_head(with_group_2, ExplicitVRLittleEndian, len(with_group_2)) is None


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "staged.dcm"
    path.write_bytes(data)
    return path
