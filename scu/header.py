"""A fast reader for the few header values the sender needs, with pydicom as the fallback.

pydicom's ``dcmread`` costs ~1 ms per file, a fifth of what sending a small instance costs. Most files
are plain Little Endian with the File Meta group first and StudyInstanceUID (0020,000D) early in the data
set; for those this reader walks the top-level elements of the first bytes. Anything else (big endian,
deflated, undefined-length sequences before the study UID, a short read) returns ``None`` and the caller
uses pydicom.
"""

from __future__ import annotations

import struct
from pathlib import Path

from domain.file_meta import LONG_VRS, UNDEFINED_LENGTH, walk_file_meta

_READ_BYTES = 16384
_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_STUDY_UID_TAG = 0x0020000D

HeaderValues = tuple[str, str, str, str]
"""(SOP Class UID, SOP Instance UID, Transfer Syntax UID, StudyInstanceUID or '')."""


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\x00 ").decode("ascii", "replace")


def read_header(path: Path) -> HeaderValues | None:
    """The header values of a Little Endian DICOM file, or None when pydicom must decide."""
    with open(path, "rb") as fp:
        data = fp.read(_READ_BYTES)
    walked = walk_file_meta(data)
    if walked is None:
        return None
    values, offset = walked
    meta = {element: _text(values[element]) for element in (0x0002, 0x0003, 0x0010) if element in values}
    syntax = meta.get(0x0010, "")
    if syntax not in (_IMPLICIT_LE, _EXPLICIT_LE) or not meta.get(0x0002) or not meta.get(0x0003):
        return None
    study_uid = _find_study_uid(data, offset, implicit=syntax == _IMPLICIT_LE)
    if study_uid is None:
        return None
    return meta[0x0002], meta[0x0003], syntax, study_uid


def _find_study_uid(data: bytes, offset: int, implicit: bool) -> str | None:
    """StudyInstanceUID from the top-level elements; '' when absent; None when the walk cannot tell."""
    while offset + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, offset)
        tag = group << 16 | element
        if tag > _STUDY_UID_TAG:
            return ""
        if implicit:
            (length,) = struct.unpack_from("<I", data, offset + 4)
            offset += 8
        elif data[offset + 4 : offset + 6] in LONG_VRS:
            if offset + 12 > len(data):
                return None
            (length,) = struct.unpack_from("<I", data, offset + 8)
            offset += 12
        else:
            (length,) = struct.unpack_from("<H", data, offset + 6)
            offset += 8
        if length == UNDEFINED_LENGTH or offset + length > len(data):
            return None
        if tag == _STUDY_UID_TAG:
            return _text(data[offset : offset + length])
        offset += length
    return None
