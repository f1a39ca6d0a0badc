"""The File Meta walk shared by the sender and the STOW-RS front door, on cut and mangled bytes."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from domain.file_meta import PREFIX_END, walk_file_meta


def element(number: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"UN"):
        return struct.pack("<HH", 2, number) + vr + b"\0\0" + struct.pack("<I", len(value)) + value
    return struct.pack("<HH", 2, number) + vr + struct.pack("<H", len(value)) + value


HEAD = (
    b"\0" * 128
    + b"DICM"
    + element(0x0001, b"OB", b"\0\1")
    + element(0x0002, b"UI", b"1.2.840.10008.5.1.4.1.1.2\0")
    + element(0x0003, b"UI", b"1.2.3.4\0")
    + element(0x0010, b"UI", b"1.2.840.10008.1.2.1\0")
    + struct.pack("<HH", 8, 0x16)
    + b"UI\4\0abcd"
)


def test_the_walk_returns_every_group_0002_value_and_where_the_data_set_starts() -> None:
    walked = walk_file_meta(HEAD)
    assert walked is not None
    values, offset = walked
    assert values[0x0003] == b"1.2.3.4\0" and values[0x0010] == b"1.2.840.10008.1.2.1\0"
    assert HEAD[offset : offset + 4] == struct.pack("<HH", 8, 0x16)


def test_a_long_vr_header_cut_after_eight_bytes_is_not_a_file_meta() -> None:
    cut = HEAD[: PREFIX_END + 10]  # inside the (0002,0001) OB element's 12-byte header
    assert walk_file_meta(cut) is None


@given(cut=st.integers(0, len(HEAD)), flips=st.lists(st.tuples(st.integers(0, len(HEAD) - 1), st.integers(0, 255))))
def test_cut_or_mangled_bytes_give_values_or_none_never_an_exception(cut: int, flips: list[tuple[int, int]]) -> None:
    data = bytearray(HEAD)
    for index, byte in flips:
        data[index] = byte
    walked = walk_file_meta(bytes(data[:cut]))
    if walked is not None:
        values, offset = walked
        assert PREFIX_END <= offset <= cut and all(isinstance(v, bytes) for v in values.values())
