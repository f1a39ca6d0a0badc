"""DICOM text → clean Unicode, with pydicom's own character-set files run file → event → ready → FHIR name."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.data import get_charset_files

from domain.dicom_event import InstanceIdentity, Reception, instance_event
from domain.dicom_text import clean_text, decode_person_name, is_placeholder
from domain.fhir_resources import MappingOptions, build_patient
from domain.study import patient_from_event
from tests.factories import make_ready

IDENTITY = InstanceIdentity("1.2.3", "1.2.3.4", "1.2.3.4.5", "1.2.840.10008.5.1.4.1.1.2")
RECEPTION = Reception("1.2.840.10008.1.2.1", "MOD", "SS", "10.0.0.1:1", "2024-05-01T10:00:00Z", "/x", 1, "")
FORBIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def charset_file(name: str) -> Path:
    (path,) = get_charset_files(name)
    return Path(path)


def event_of(data: bytes | Path):
    ds = dcmread(io.BytesIO(data) if isinstance(data, bytes) else data, stop_before_pixels=True)
    return instance_event(ds, IDENTITY, RECEPTION)


def fhir_names(event) -> list[dict]:
    ready = make_ready()
    patient = patient_from_event(event)
    return build_patient(ready.__class__(**{**_fields(ready), "patient": patient}), MappingOptions()).as_json()["name"]


def _fields(record) -> dict:
    return {name: getattr(record, name) for name in record.__struct_fields__}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("chrH31.dcm", "Yamada^Tarou=山田^太郎=やまだ^たろう"),
        ("chrH32.dcm", "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう"),
        ("chrI2.dcm", "Hong^Gildong=洪^吉洞=홍^길동"),
        ("chrX1.dcm", "Wang^XiaoDong=王^小東"),
        ("chrX2.dcm", "Wang^XiaoDong=王^小东"),
        ("chrFren.dcm", "Buc^Jérôme"),
        ("chrGerm.dcm", "Äneas^Rüdiger"),
        ("chrRuss.dcm", "Люкceмбypг"),
        ("chrArab.dcm", "قباني^لنزار"),
        ("chrHbrw.dcm", "שרון^דבורה"),
    ],
)
def test_pydicom_character_set_files_decode_to_their_names(name: str, expected: str) -> None:
    event = event_of(charset_file(name))
    assert event.patient_name == expected
    assert event.repaired == ()


def test_a_jis_character_with_a_0x5e_byte_is_not_taken_for_a_component_delimiter() -> None:
    # やまだ is ESC $ B, then $d $^ $@: the middle character's second byte is '^'.
    event = event_of(charset_file("chrH31.dcm"))
    phonetic = fhir_names(event)[2]
    assert (phonetic["family"], phonetic["given"]) == ("やまだ", ["たろう"])


def test_chrh31_without_its_specific_character_set_is_decoded_by_its_escapes_and_flagged() -> None:
    raw = charset_file("chrH31.dcm").read_bytes()
    declared = b"\\ISO 2022 IR 87"
    patched = raw.replace(declared, b" " * len(declared))  # (0008,0005) blank: the default repertoire
    event = event_of(patched)
    assert event.patient_name == "Yamada^Tarou=山田^太郎=やまだ^たろう"
    assert "PatientName" in event.repaired
    for name in fhir_names(event):
        assert "\x1b" not in str(name)


def test_a_single_ideographic_group_is_marked_ide() -> None:
    (name,) = build_patient(make_ready(name="=山田^太郎"), MappingOptions()).as_json()["name"]
    assert name["extension"][0]["valueCode"] == "IDE" and name["family"] == "山田"


@given(st.binary(max_size=200), st.sampled_from([[], ["iso8859"], ["iso8859", "iso2022_jp"], ["utf8"], ["gb18030"]]))
def test_any_person_name_bytes_decode_to_clean_text_without_raising(raw: bytes, encodings: list[str]) -> None:
    text, _ = decode_person_name(raw, encodings)
    assert not FORBIDDEN.search(text) and "\x1b" not in text and "\n" not in text
    assert text.count("=") <= 2 and all(group.count("^") <= 4 for group in text.split("="))
    assert clean_text(text) == text.strip() or text == ""


@given(st.text(max_size=300))
def test_clean_text_is_idempotent_and_leaves_no_control_character(text: str) -> None:
    cleaned = clean_text(text)
    assert clean_text(cleaned) == cleaned
    assert not FORBIDDEN.search(cleaned) and "\x1b" not in cleaned and "\n" not in cleaned


@pytest.mark.parametrize(
    ("value", "placeholder"), [("----", True), ("^^", True), ("", True), (" . ", True), ("A", False)]
)
def test_placeholders(value: str, placeholder: bool) -> None:
    assert is_placeholder(value) is placeholder
