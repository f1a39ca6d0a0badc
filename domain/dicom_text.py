"""DICOM text → clean Unicode: person names decoded before they are split, no escapes or control characters.

Pure functions, no I/O. Two defects of received text are repaired here, once, for every string that
can reach a FHIR resource:

- **ISO 2022 escape sequences.** A sender that switches character sets inside a value (Japanese,
  Korean names) but does not declare them in SpecificCharacterSet (0008,0005) leaves pydicom decoding
  the value in the default repertoire: ``ESC $ B`` and the JIS bytes after it reach the text.
  :func:`decode_person_name` decodes such a value by the sets its own escape sequences name (they are
  unambiguous), and :func:`clean_text` removes whatever escape sequence is left.
- **Delimiters inside multi-byte characters.** pydicom splits a PN value on the bytes ``=`` and ``^``
  before decoding, so a JIS X 0208 character whose second byte is 0x5E (``$^`` is ま) is taken for a
  component delimiter. A PN is decoded here as a whole (delimiters only count in the single-byte
  state, where DICOM requires the sender to return before one) and split afterwards.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

from pydicom import charset as pydicom_charset

ESC = 0x1B
# ESC, intermediate bytes 0x20-0x2F, a final byte 0x30-0x7E (ISO 2022 / ECMA-35), as text.
_ESCAPE_SEQUENCE = re.compile("\x1b[\x20-\x2f]*[\x30-\x7e]?")
# C0 and C1 controls and DEL; tab, line feed and carriage return are handled by the caller's kind of text.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_LINE_BREAKS = re.compile("[\t\r\n]+")
_SURROGATES = re.compile("[\ud800-\udfff]")
# What a sender writes when it has nothing to say: only punctuation, carets and spaces.
_PLACEHOLDER = re.compile(r"\A[\s\-_.*?^=/\\#~]*\Z")
DEFAULT_ENCODING = "iso8859"  # pydicom's name for the default repertoire (ISO-IR 6), read leniently


def clean_text(text: str, single_line: bool = True) -> str:
    """``text`` without escape sequences, control characters or lone surrogates, stripped.

    ``single_line``: tabs and line breaks become one space (names, codes, short strings); a
    multi-line value (LT, ST, UT) keeps them.
    """
    if not text:
        return ""
    if "\x1b" in text:
        text = _ESCAPE_SEQUENCE.sub("", text)
    if single_line:
        text = _LINE_BREAKS.sub(" ", text)
    text = _CONTROL.sub("", text)
    text = _SURROGATES.sub("", text)
    return text.strip()


def is_placeholder(text: str) -> bool:
    """Whether a value says nothing: empty, or only dashes, dots, carets, stars and the like (``----``, ``^^``)."""
    return bool(_PLACEHOLDER.match(text))


def escape_encodings(raw: bytes) -> list[str]:
    """The Python codecs the ISO 2022 escape sequences in ``raw`` designate (in order, no repeats)."""
    found: list[str] = []
    start = raw.find(ESC)
    while start >= 0:
        for code, encoding in pydicom_charset.CODES_TO_ENCODINGS.items():
            if raw.startswith(code, start) and encoding not in found:
                found.append(encoding)
                break
        start = raw.find(ESC, start + 1)
    return found


def decode_value(raw: bytes, encodings: Sequence[str], delimiters: frozenset[int] = frozenset()) -> tuple[str, bool]:
    """``raw`` decoded with the declared ``encodings`` and any the value's own escape sequences add.

    Returns (text, undeclared): ``undeclared`` when the value designated a character set that
    SpecificCharacterSet did not declare. Never raises: undecodable bytes become U+FFFD.
    """
    declared = list(encodings) or [DEFAULT_ENCODING]
    extra = [e for e in escape_encodings(raw) if e not in declared] if ESC in raw else []
    with warnings.catch_warnings():
        # pydicom warns (and logs) for every fragment it cannot decode; the caller counts it instead.
        warnings.simplefilter("ignore")
        try:
            text = pydicom_charset.decode_bytes(raw, declared + extra, set(delimiters))
        except (LookupError, ValueError):
            text = raw.decode("latin-1")  # every byte is a character: nothing is lost unseen
    return text, bool(extra)


def split_person_name(text: str) -> list[list[str]]:
    """A decoded PN value → up to three component groups (alphabetic, ideographic, phonetic) of five components."""
    groups = text.split("=")[:3]
    return [([clean_text(part) for part in group.split("^")] + [""] * 5)[:5] for group in groups]


def join_person_name(groups: Sequence[Sequence[str]]) -> str:
    """Component groups back to DICOM's ``family^given^middle^prefix^suffix=...``, trailing empties dropped."""
    texts = []
    for components in groups:
        parts = list(components)
        while parts and not parts[-1]:
            parts.pop()
        texts.append("^".join(parts))
    while texts and not texts[-1]:
        texts.pop()
    return "=".join(texts)


def decode_person_name(raw: bytes, encodings: Sequence[str]) -> tuple[str, bool]:
    """One PN value (bytes as received) → its clean Unicode text in DICOM's PN syntax, and ``undeclared``.

    The value is decoded whole, then split into groups and components, each cleaned; a placeholder
    group (``^^``, ``----``) is dropped to empty.
    """
    text, undeclared = decode_value(raw, encodings)
    return clean_person_name(text), undeclared


def clean_person_name(text: str) -> str:
    """A decoded PN value split, each component cleaned, placeholder groups emptied, and joined again."""
    groups = [[] if is_placeholder("^".join(g)) else g for g in split_person_name(text)]
    return join_person_name(groups)
