"""What a DICOM UID is, decided in one place: the receiver, the records' decoders, the tables and the web view ask here.

PS3.5 9.1: digit groups separated by single dots, at most 64 characters. UIDs become file names,
table keys (``<study>|<child>``) and URL segments, so anything else is refused everywhere.
"""

from __future__ import annotations

import re

UID_MAX_LENGTH = 64
# For msgspec's Meta(pattern=...), which searches: anchored at both ends (\Z, not $, which allows a final newline).
UID_PATTERN = r"\A[0-9]+(\.[0-9]+)*\Z"
_UID = re.compile(UID_PATTERN)


def is_valid_uid(value: object) -> bool:
    return isinstance(value, str) and len(value) <= UID_MAX_LENGTH and _UID.match(value) is not None
