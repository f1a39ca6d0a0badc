"""The File Meta group of a PS3.10 file, walked from its first bytes (pure: no I/O).

Shared by the sender's fast header reader (:mod:`scu.header`) and the STOW-RS part reader
(:func:`domain.stow.part10_meta`): preamble, ``DICM``, then group 0002 in explicit VR little endian.
"""

from __future__ import annotations

import struct

PREFIX_END = 132  # 128-byte preamble + "DICM"
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
UNDEFINED_LENGTH = 0xFFFFFFFF


def walk_file_meta(head: bytes) -> tuple[dict[int, bytes], int] | None:
    """(element number → raw value of every group 0002 element, offset just past the group), or None when
    ``head`` does not hold one whole: no ``DICM``, an element header or value past ``head``, an undefined
    length."""
    if len(head) < PREFIX_END or head[128:132] != b"DICM":
        return None
    values: dict[int, bytes] = {}
    offset = PREFIX_END
    while offset + 8 <= len(head):
        group, element = struct.unpack_from("<HH", head, offset)
        if group != 0x0002:
            return values, offset
        if head[offset + 4 : offset + 6] in LONG_VRS:
            if offset + 12 > len(head):
                return None
            length, offset = struct.unpack_from("<I", head, offset + 8)[0], offset + 12
        else:
            length, offset = struct.unpack_from("<H", head, offset + 6)[0], offset + 8
        if length == UNDEFINED_LENGTH or offset + length > len(head):
            return None
        values[element] = head[offset : offset + length]
        offset += length
    if offset < len(head):  # a truncated element header
        return None
    return values, offset
