"""The printable-ASCII shortcut of the event's reader against pydicom's converters, its oracle."""

from __future__ import annotations

import warnings

from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import config
from pydicom.charset import python_encoding
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.values import convert_value

from domain.dicom_reader import plain_ascii_text

VRS = ["AS", "CS", "DA", "DT", "LO", "SH", "TM", "AE", "PN", "UI", "DS", "IS", "LT", "ST", "UT", "UC"]
CHARSETS = [None, *sorted(python_encoding)]
# Printable ASCII with its delimiter and the bytes around it, ESC and the other controls, and high bytes.
hostile_bytes = st.one_of(
    st.binary(max_size=40),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x7F), max_size=40).map(str.encode),
    st.text(alphabet=" \0\\\x1b$B()ABC^=-0123456789.:+", max_size=40).map(str.encode),
)


def pydicoms(vr: str, value: bytes, charset: str | None) -> object:
    raw = RawDataElement(Tag(0x00080050), vr, len(value), value, 0, False, True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert_value(vr, raw, charset)


@settings(max_examples=600, deadline=None)
@given(vr=st.sampled_from(VRS), value=hostile_bytes, charset=st.sampled_from(CHARSETS))
def test_the_shortcut_answers_only_what_pydicom_answers(vr: str, value: bytes, charset: str | None) -> None:
    shortcut = plain_ascii_text(vr, value)
    if shortcut is not None:
        assert shortcut == pydicoms(vr, value, charset)
        assert type(pydicoms(vr, value, charset)) is str  # not a MultiValue nor a date object


def test_the_shortcut_takes_the_common_values_and_leaves_the_rest() -> None:
    assert plain_ascii_text("SH", b"ACC123 ") == "ACC123"
    assert plain_ascii_text("DA", b"20240131") == "20240131"
    assert plain_ascii_text("CS", b"ORIGINAL\\PRIMARY") is None  # multi-valued
    assert plain_ascii_text("LO", b"\x1b$B") is None  # an ISO 2022 escape
    assert plain_ascii_text("LO", "Müller".encode("latin-1")) is None
    assert plain_ascii_text("PN", b"Doe^Jane") is None  # person names keep their own reader
    assert plain_ascii_text("SH", b"") is None  # pydicom's empty value for the VR


def test_the_shortcut_steps_aside_for_date_objects_and_strict_reading(monkeypatch) -> None:
    monkeypatch.setattr(config, "datetime_conversion", True)
    assert plain_ascii_text("DA", b"20240131") is None
    assert plain_ascii_text("SH", b"ACC") == "ACC"
    monkeypatch.setattr(config, "datetime_conversion", False)
    monkeypatch.setattr(config.settings, "reading_validation_mode", config.RAISE)
    assert plain_ascii_text("SH", b"ACC") is None
