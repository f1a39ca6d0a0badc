"""The reader's own conversion of raw elements (domain.dicom_reader.raw_value) gives what pydicom's
``ds[tag].value`` gives, for any bytes, in any character set the receiver meets."""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from domain.dicom_reader import _PLAIN_VRS, BoundedReader, EventLimits, plain_uid, raw_value, tag_of

# Keywords the event builder reads, one or more per plain VR.
KEYWORDS = {
    "AE": "RetrieveAETitle",
    "AS": "PatientAge",
    "CS": "Modality",
    "DA": "StudyDate",
    "DS": "SliceThickness",
    "DT": "AcquisitionDateTime",
    "IS": "InstanceNumber",
    "LO": "StudyDescription",
    "LT": "AdditionalPatientHistory",
    "SH": "AccessionNumber",
    "ST": "InstitutionAddress",
    "TM": "StudyTime",
    "UC": "LongCodeValue",
    "UI": "StudyInstanceUID",
    "UR": "URNCodeValue",
    "UT": "StrainAdditionalInformation",
}
CHARSETS = [None, "ISO_IR 100", "ISO_IR 192", "GB18030", ["", "ISO 2022 IR 87"], "ISO_IR 144", "bogus"]
value_bytes = st.one_of(
    st.binary(max_size=80),
    st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"", b" ", b"ABC\\DEF", b"1.2.3\x00", b"12.5 ", b"\x1b$B", b"20240101\\20240102"]),
)


def test_every_plain_vr_has_a_keyword_here() -> None:
    assert set(KEYWORDS) == _PLAIN_VRS


@settings(max_examples=400, deadline=None)
@given(vr=st.sampled_from(sorted(KEYWORDS)), raw=value_bytes, charset=st.sampled_from(CHARSETS), implicit=st.booleans())
def test_the_reader_converts_a_raw_element_as_pydicom_does(
    vr: str, raw: bytes, charset: object, implicit: bool
) -> None:
    keyword = KEYWORDS[vr]
    ds = Dataset()
    if charset is not None:
        ds.SpecificCharacterSet = charset
    tag = tag_of(keyword)
    ds[tag] = RawDataElement(Tag(tag), None if implicit else vr, len(raw), raw, 0, implicit, True)
    reference = copy.deepcopy(ds)
    try:
        expected = reference[tag].value
    except (ValueError, TypeError, AttributeError, LookupError, OverflowError, UnicodeError):
        expected = None
    assert raw_value(ds, keyword) == expected
    reader = BoundedReader(EventLimits())
    assert isinstance(reader.text(ds, keyword), str)  # and the cleaning after it never raises


@settings(max_examples=400, deadline=None)
@given(
    raw=value_bytes | st.sampled_from([b"1.2.840.10008.1\x00", b" 1.2.3 ", b"1.2\x00\x00", b"1.2\\3.4", b"1.2 \x00"]),
    vr=st.sampled_from([None, "UI", "LO"]),
    keyword=st.sampled_from(["StudyInstanceUID", "SOPClassUID", "PatientID"]),
)
def test_a_plain_uid_is_what_pydicom_reads_stripped_or_none(raw: bytes, vr: str | None, keyword: str) -> None:
    ds = Dataset()
    tag = tag_of(keyword)
    element = RawDataElement(Tag(tag), vr, len(raw), raw, 0, vr is None, True)
    ds[tag] = element
    value = plain_uid(element, keyword)
    if (vr or ("UI" if keyword != "PatientID" else "LO")) != "UI":
        assert value is None  # not a UID: converted as usual
        return
    read = copy.deepcopy(ds)[tag].value
    if value is None:
        assert not isinstance(read, str)  # several values: converted as usual
    else:
        assert value == str(read).strip()
