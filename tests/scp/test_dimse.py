"""The hand-written command set decoder (scp.dimse.decode_command) against pydicom's, and with hostile bytes."""

from __future__ import annotations

import struct
from io import BytesIO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset

from scp import dimse

_UIDS = st.from_regex(r"\A[1-9][0-9]{0,20}(\.[1-9][0-9]{0,12}){0,5}\Z")
_US = st.integers(0, 0xFFFF)


@st.composite
def requests(draw: st.DrawFn) -> Dataset:
    """A command set as an SCU could send it: any subset of a request's elements, any values."""
    command = Dataset()
    command.CommandField = draw(_US)
    for keyword, values in (
        ("MessageID", _US),
        ("MessageIDBeingRespondedTo", _US),
        ("Priority", _US),
        ("CommandDataSetType", _US),
        ("Status", _US),
        ("ActionTypeID", _US),
        ("EventTypeID", _US),
        ("AffectedSOPClassUID", _UIDS),
        ("AffectedSOPInstanceUID", _UIDS),
        ("RequestedSOPClassUID", _UIDS),
        ("RequestedSOPInstanceUID", _UIDS),
        ("MoveOriginatorApplicationEntityTitle", st.from_regex(r"\A[A-Z0-9_]{1,16}\Z")),
    ):
        if draw(st.booleans()):
            setattr(command, keyword, draw(values))
    return command


@settings(max_examples=200, deadline=None)
@given(request=requests())
def test_a_request_decodes_to_the_values_pydicom_reads(request: Dataset) -> None:
    data = dimse.encode_command(request)
    expected = read_dataset(BytesIO(data), is_implicit_VR=True, is_little_endian=True)
    decoded = dimse.decode_command(data)
    assert set(decoded) == {element.keyword for element in expected}
    for element in expected:
        value = element.value
        if isinstance(value, str):
            value = value.strip()
        assert decoded.get(element.keyword) == value, element.keyword
        assert getattr(decoded, element.keyword) == value
        assert element.keyword in decoded
    assert dimse.has_dataset(decoded) == (expected.get("CommandDataSetType", dimse.NO_DATASET) != dimse.NO_DATASET)


@settings(max_examples=100, deadline=None)
@given(request=requests(), status=_US)
def test_a_response_to_a_decoded_request_is_the_one_to_pydicoms(request: Dataset, status: int) -> None:
    data = dimse.encode_command(request)
    parsed = read_dataset(BytesIO(data), is_implicit_VR=True, is_little_endian=True)
    field = dimse.N_ACTION_RSP
    assert dimse.response(field, dimse.decode_command(data), status) == dimse.response(field, parsed, status)


def test_a_missing_element_is_the_default_or_an_attribute_error() -> None:
    decoded = dimse.decode_command(struct.pack("<HHIH", 0, 0x0100, 2, dimse.C_ECHO_RQ))
    assert decoded.get("MessageID", 7) == 7 and "MessageID" not in decoded
    with pytest.raises(AttributeError):
        decoded.MessageID  # noqa: B018 - the access is what is tested


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "Command Field"),
        (struct.pack("<HHI", 0, 0x0110, 2) + b"\x07\x00", "Command Field"),  # a Message ID alone
        (struct.pack("<HHI", 0, 0x0100, 3) + b"\x01\x00\x00", "US element of 3 bytes"),
        (struct.pack("<HHI", 0, 0x0100, 2) + b"\x01", "past its end"),
        (struct.pack("<HHI", 0, 0x0100, 0xFFFFFFFF), "past its end"),
        (struct.pack("<HHIH", 0, 0x0100, 2, 1) + b"\x00\x00\x00", "header runs past"),
        (struct.pack("<HHI", 0x0008, 0x0100, 2) + b"\x01\x00", "Command Field"),  # another group's element
    ],
)
def test_a_malformed_command_set_is_a_command_error(data: bytes, why: str) -> None:
    with pytest.raises(dimse.CommandError, match=why):
        dimse.decode_command(data)


@settings(max_examples=500, deadline=None)
@given(
    data=st.binary(max_size=300)
    | st.lists(st.tuples(_US, _US, st.binary(max_size=12))).map(
        lambda elements: b"".join(
            struct.pack("<HHI", group % 3, element, len(value)) + value for group, element, value in elements
        )
    )
)
def test_hostile_bytes_give_a_command_with_a_command_field_or_a_command_error(data: bytes) -> None:
    try:
        decoded = dimse.decode_command(data)
    except dimse.CommandError:
        return
    assert isinstance(decoded.CommandField, int)
    assert all(isinstance(value, int | str | bytes) for value in decoded.values.values())
    dimse.has_dataset(decoded)
    dimse.response(decoded.CommandField | 0x8000, decoded, 0)
