"""DICOM dataset → instance event: every copied attribute clipped to its VR, repeats capped, what was cut listed,
and an event of any dataset fits one Kafka message and passes the aggregator's own decoder."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from domain.dicom_event import EventLimits, InstanceIdentity, Reception, instance_event
from domain.events import decode_instance_event, encode_instance_event

IDENTITY = InstanceIdentity("1.2.3", "1.2.3.4", "1.2.3.4.5", "1.2.840.10008.5.1.4.1.1.2")
RECEPTION = Reception("1.2.840.10008.1.2", "MOD", "STUDYSTREAM", "10.0.0.1:4000", "2024-05-01T10:00:00.000+00:00",
                      "/data/1.2.3/1.2.3.4/1.2.3.4.5.dcm", 1000, "ab" * 32)  # fmt: skip
MAX_MESSAGE_BYTES = 1024 * 1024  # the smallest max_message_bytes StudyStream accepts

TEXT_KEYWORDS = [
    "Modality", "StudyDate", "StudyTime", "TimezoneOffsetFromUTC", "StudyID", "StudyDescription", "AccessionNumber",
    "InstitutionName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "SeriesDescription",
    "SeriesDate", "SeriesTime", "BodyPartExamined", "Laterality", "ImageLaterality", "Manufacturer",
    "ManufacturerModelName", "ContentLabel", "DocumentTitle", "ImageType", "InstanceNumber", "SeriesNumber",
]  # fmt: skip
NAME_KEYWORDS = ["PatientName", "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName"]


def test_a_9_mb_study_description_is_clipped_to_lo_and_named() -> None:
    ds = Dataset()
    ds.StudyDescription = "x" * 9_000_000
    ds.PatientName = "A" * 100 + "^B=" + "山" * 80
    event = instance_event(ds, IDENTITY, RECEPTION)
    assert event.study_description == "x" * 64
    assert event.patient_name == "A" * 64 + "=" + "山" * 64  # 64 characters per component group
    assert set(event.clipped) == {"StudyDescription", "PatientName"}
    assert len(encode_instance_event(event)) < 4096


def test_repeated_values_and_items_are_capped_by_the_limits() -> None:
    ds = Dataset()
    ds.ImageType = ["ORIGINAL"] * 500
    ds.PerformingPhysicianName = [f"Doc^{i}" for i in range(500)]
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "1" * 40, "DCM", "m" * 100
    ds.ProcedureCodeSequence = [item] * 300
    event = instance_event(ds, IDENTITY, RECEPTION, EventLimits(max_values=10, max_items=5))
    assert event.instance_title.count("ORIGINAL") == 10
    assert event.performing_physician.count("\\") == 9
    assert len(event.procedure_codes) == 5 and event.procedure_codes[0].code == "1" * 16  # SH
    assert {"ImageType", "PerformingPhysicianName", "ProcedureCodeSequence"} <= set(event.clipped)
    assert "ProcedureCodeSequence>CodeValue" in event.clipped


# Attributes whose event field is short (ShortText, 256 characters) while the values they may repeat are not.
SHORT_FIELD_KEYWORDS = {
    "Modality": "modality", "StudyDate": "study_date", "StudyTime": "study_time", "PatientSex": "sex",
    "TimezoneOffsetFromUTC": "timezone_offset", "PatientBirthDate": "birth_date", "SeriesDate": "series_date",
    "SeriesTime": "series_time", "Laterality": "laterality", "ImageLaterality": "image_laterality",
}  # fmt: skip


def test_many_values_of_a_short_attribute_are_cut_to_the_event_field_and_named() -> None:
    ds = Dataset()
    ds.Laterality = ["ß" * 16] * 64  # 64 values of CS's 16 characters, and upper() doubles each: 2,111 characters
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "1", ["SCHEME" * 3] * 64, "m"
    ds.ProcedureCodeSequence = [item]
    event = instance_event(ds, IDENTITY, RECEPTION)
    assert event.laterality.startswith("SS" * 16 + "\\") and len(event.laterality) == 256
    assert len(event.procedure_codes[0].scheme) == 256
    assert {"laterality", "ProcedureCodeSequence>scheme"} <= set(event.clipped)
    assert decode_instance_event(encode_instance_event(event)) == event


HOSTILE_TEXT = st.one_of(
    st.text(max_size=50),
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\\"), min_size=200, max_size=3000),
    st.sampled_from(["", "\x1b$B", "=山田^太郎", "\u202e", "  ", "x" * 70_000, "1e400", "-2147483649", "nan"]),
)


def raw(ds: Dataset, keyword: str, values: list[str]) -> None:
    """The element as it arrives on the wire (UTF-8, explicit VR): pydicom converts, and may fail, on access."""
    tag = tag_for_keyword(keyword)
    assert tag is not None
    value = "\\".join(values).encode("utf-8")
    ds[tag] = RawDataElement(Tag(tag), dictionary_VR(tag), len(value), value, 0, False, True)


@st.composite
def hostile_datasets(draw: st.DrawFn) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    for keyword in draw(st.lists(st.sampled_from(TEXT_KEYWORDS + NAME_KEYWORDS), unique=True)):
        raw(ds, keyword, draw(st.lists(HOSTILE_TEXT, min_size=1, max_size=draw(st.sampled_from([1, 3, 80])))))
    items = []
    for _ in range(draw(st.integers(0, 80))):
        item = Dataset()
        for keyword in ("CodeValue", "CodingSchemeDesignator", "CodeMeaning"):
            raw(item, keyword, draw(st.lists(HOSTILE_TEXT, min_size=1, max_size=draw(st.sampled_from([1, 3])))))
        items.append(item)
    if items:
        ds.ProcedureCodeSequence = items
    return ds


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(hostile_datasets())
def test_an_event_of_any_dataset_fits_a_message_with_room_to_spare_and_decodes(ds: Dataset) -> None:
    event = instance_event(ds, IDENTITY, RECEPTION)
    encoded = encode_instance_event(event)
    assert len(encoded) < MAX_MESSAGE_BYTES // 4
    assert decode_instance_event(encoded) == event


SHORT_ALPHABET = "ABCabc0123456789.+-"  # ASCII: CS, DA and TM values are not decoded by SpecificCharacterSet


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(sorted(SHORT_FIELD_KEYWORDS)),
    st.one_of(
        st.lists(st.text(alphabet=SHORT_ALPHABET, min_size=1, max_size=70), min_size=1, max_size=80),
        st.lists(st.text(alphabet=SHORT_ALPHABET, min_size=16, max_size=70), min_size=20, max_size=80),  # > 256
    ),
)
def test_any_number_of_values_of_a_short_attribute_fits_its_event_field(keyword: str, values: list[str]) -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    raw(ds, keyword, values)
    event = instance_event(ds, IDENTITY, RECEPTION)
    field = SHORT_FIELD_KEYWORDS[keyword]
    copied, whole = getattr(event, field), "\\".join(values)
    assert len(copied) <= 256
    if copied not in (whole, whole.upper()):  # less than the dataset holds: the event says so
        assert field in event.clipped or keyword in event.clipped
    assert decode_instance_event(encode_instance_event(event)) == event
