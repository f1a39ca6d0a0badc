"""Reading a dataset's attributes for the instance event, bounded (pure): every text value is cleaned
and clipped to its VR's maximum length, every repeated value capped by :class:`EventLimits`, and what
was clipped or repaired is recorded. :mod:`domain.dicom_event` builds the event with it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import msgspec
from pydicom import config
from pydicom.charset import TEXT_VR_DELIMS
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag
from pydicom.valuerep import PersonName
from pydicom.values import convert_value

from domain.dicom_text import clean_person_name, clean_text, decode_person_name, decode_value
from domain.events import CodedValue

VALUE_ERRORS = (ValueError, TypeError, AttributeError, LookupError, OverflowError, UnicodeError)

VR_MAX_CHARS = {
    "AE": 16,
    "AS": 4,
    "CS": 16,
    "DA": 8,
    "DS": 16,
    "DT": 26,
    "IS": 12,
    "LO": 64,
    "LT": 10240,
    "PN": 64,
    "SH": 16,
    "ST": 1024,
    "TM": 14,
    "UI": 64,
}
MULTI_LINE_VRS = frozenset({"LT", "ST", "UT"})  # text that may keep its line breaks
# VRs whose raw bytes :func:`raw_value` converts itself (pydicom's converter, nothing else needed):
# not PN (kept raw for :meth:`BoundedReader.names`), SQ (items need their parent), or ambiguous VRs.
_PLAIN_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})
_TEXT_DELIMITERS = frozenset(TEXT_VR_DELIMS)
_ASCII_TEXT_VRS = frozenset({"AS", "CS", "DA", "DT", "LO", "SH", "TM"})  # decoded as text, padding stripped
_DATETIME_VRS = frozenset({"DA", "DT", "TM"})  # objects instead when config.datetime_conversion is on
_PRINTABLE_NOT_DELIMITER = bytes(b for b in range(0x20, 0x7F) if b != 0x5C)  # 0x5C: the value delimiter


@dataclass(frozen=True, slots=True)
class EventLimits:
    """How much of a dataset an event may copy (see the ``receiver_event_*`` settings)."""

    max_values: int = 64  # values of one multi-valued attribute
    max_items: int = 64  # items of a sequence (procedure codes)
    unbounded_chars: int = 10240  # UT, UC, UR and unknown VRs
    max_references: int = 10_000  # instances a rejection note names


@lru_cache(maxsize=8)
def string_bounds(struct: type[msgspec.Struct]) -> tuple[tuple[str, int], ...]:
    """The maximum length of each bounded string field of ``struct``, as its schema declares it."""
    return tuple(
        (field.name, field.type.max_length)
        for field in msgspec.inspect.type_info(struct).fields
        if isinstance(field.type, msgspec.inspect.StrType) and field.type.max_length is not None
    )


@lru_cache(maxsize=512)
def tag_of(keyword: str) -> BaseTag:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return Tag(tag)


def raw_value(ds: Dataset, keyword: str) -> Any:
    """The value of ``keyword`` in ``ds`` (``None`` when absent or unreadable). By tag: pydicom's keyword
    lookup (``ds.get(keyword)``) costs as much again as reading the value."""
    return _value_of(ds, _element(ds, keyword), keyword, None)


def _element(ds: Dataset, keyword: str) -> Any:
    """The element of ``keyword`` as the dataset holds it: still as read (a RawDataElement) or converted."""
    try:
        return read_element(ds, keyword)
    except VALUE_ERRORS:
        return None


def _value_of(ds: Dataset, element: Any, keyword: str, charset: Any) -> Any:
    """The value of ``element`` (from :func:`_element`); ``charset``: ``ds._character_set`` if known.

    ``None`` when the element is absent or its value unreadable (:func:`element_value` raises instead).
    """
    try:
        return element_value(ds, element, keyword, charset)
    except VALUE_ERRORS:
        return None


def element_value(ds: Dataset, element: Any, keyword: str, charset: Any = None) -> Any:
    """The value of ``element`` (from :func:`_element`, ``None`` when absent); raises what pydicom raises.

    An element still as read of a plain VR is converted with pydicom's own converter for its VR, as
    ``ds[tag]`` would (the same value), without the dataset's bookkeeping around it: building and storing
    a DataElement, hooks, tag comparisons, which cost as much again as the conversion.
    """
    if element is None:
        return None
    if isinstance(element, RawDataElement) and isinstance(element.value, bytes):
        vr = element.VR or _vr(keyword)
        if vr in _PLAIN_VRS:
            text = plain_ascii_text(vr, element.value)
            if text is not None:
                return text
            return convert_value(vr, element, ds._character_set if charset is None else charset)
    return ds[tag_of(keyword)].value


def plain_ascii_text(vr: str, value: bytes) -> str | None:
    """What pydicom's converter returns for a single ``vr`` value of printable ASCII, without its decoder.

    Those bytes mean the same in every character set DICOM allows (ISO 2022 needs an ESC to switch,
    which is not printable), so the value is the text itself with its padding removed. None for any
    other value, VR or reading configuration: the caller converts it with pydicom. Measured 0.4 us a
    value instead of pydicom's 2.1-2.6 (SH, DA), and an event reads about twenty.
    """
    if vr not in _ASCII_TEXT_VRS or not value or value.translate(None, _PRINTABLE_NOT_DELIMITER):
        return None
    if config.settings.reading_validation_mode == config.RAISE or (vr in _DATETIME_VRS and config.datetime_conversion):
        return None
    return value.decode("ascii").rstrip("\0 ")


def plain_uid(element: Any, keyword: str) -> str | None:
    """``keyword``'s element, when still as read, of VR UI and single-valued: its value as pydicom's converter
    reads it (then ``strip``ped); None for any other element (the caller converts it as usual). pydicom's
    UID conversion and validation cost ~10 us a UID, a twentieth of the receiver's whole parse."""
    if not isinstance(element, RawDataElement) or not isinstance(element.value, bytes):
        return None
    if (element.VR or _vr(keyword)) != "UI":  # implicit VR: the dictionary's
        return None
    value = element.value.decode("latin-1").rstrip("\0 ")  # pydicom's default encoding, its padding
    return None if "\\" in value else value.strip()


def read_element(ds: Dataset, keyword: str) -> Any:
    """The element of ``keyword`` for :func:`element_value` (``None`` when absent); raises when unreadable."""
    return ds.get_item(tag_of(keyword), keep_deferred=True)


@lru_cache(maxsize=512)
def _vr(keyword: str) -> str:
    try:
        return dictionary_VR(keyword)
    except KeyError:
        return ""


def _max_chars(keyword: str, limits: EventLimits) -> int:
    return VR_MAX_CHARS.get(_vr(keyword), limits.unbounded_chars)


def _encodings(ds: Dataset) -> list[str]:
    try:
        encodings = ds._character_set  # the item's own, else its parent's: as pydicom decodes it
    except VALUE_ERRORS:
        return []
    return [encodings] if isinstance(encodings, str) else list(encodings or ())


def _undeclared_escapes(ds: Dataset, element: Any) -> str | None:
    """A text value carrying ISO 2022 escapes its SpecificCharacterSet did not declare, decoded by them; else None.

    Read from the element's bytes before pydicom converts it (the converted text keeps the escapes).
    """
    if not isinstance(element, RawDataElement) or not isinstance(element.value, bytes) or b"\x1b" not in element.value:
        return None
    text, undeclared = decode_value(element.value, _encodings(ds), _TEXT_DELIMITERS)
    return text if undeclared else None


class BoundedReader:
    """Reads the attributes an event copies, each cleaned and clipped to its VR's length; remembers what it did."""

    def __init__(self, limits: EventLimits) -> None:
        self.limits = limits
        self.clipped: list[str] = []
        self.repaired: list[str] = []  # attributes decoded by character sets their dataset did not declare
        self._charsets: dict[int, tuple[Dataset, Any]] = {}

    def _charset(self, ds: Dataset) -> Any:
        """``ds._character_set``, computed once per dataset read (pydicom derives it on every access)."""
        known = self._charsets.get(id(ds))
        if known is None:
            try:
                charset = ds._character_set
            except VALUE_ERRORS:
                charset = None  # read again (and refused) with the value
            known = self._charsets[id(ds)] = (ds, charset)  # holding ds: its id is not reused meanwhile
        return known[1]

    def mark_clipped(self, where: str) -> None:
        """Record that the event copies less of ``where`` than the dataset holds."""
        if where not in self.clipped:
            self.clipped.append(where)

    def fit(self, struct: type[msgspec.Struct], fields: dict[str, Any], where: str = "") -> dict[str, Any]:
        """``fields`` with each string cut to its field's bound in ``struct``'s schema (and marked clipped).

        A VR's maximum bounds one value; the values of a multi-valued attribute joined, or a value that
        ``str.upper`` lengthened, can still exceed the field's bound, and the event would then fail to
        decode after the instance was acknowledged.
        """
        over = [(name, bound) for name, bound in string_bounds(struct) if len(fields.get(name, "")) > bound]
        for name, bound in over:  # rarely any: found in one pass over the schema's bounds, cut after it
            fields[name] = fields[name][:bound]
            self.mark_clipped(f"{where}{name}")
        return fields

    def _repair(self, where: str) -> None:
        if where not in self.repaired:
            self.repaired.append(where)

    def _clip(self, text: str, keyword: str, where: str, per_group: bool = False) -> str:
        limit = _max_chars(keyword, self.limits)
        if per_group:
            groups = text.split("=")
            clipped = "=".join(group[:limit] for group in groups[:3])
            changed = clipped != text
        else:
            clipped = text[:limit]
            changed = len(text) > limit
        if changed:
            self.mark_clipped(where)
        return clipped

    def _values(self, value: Any, where: str) -> list[Any]:
        values = list(value)
        if len(values) > self.limits.max_values:
            self.mark_clipped(where)
            values = values[: self.limits.max_values]
        return values

    def text(self, ds: Dataset | None, keyword: str, where: str = "") -> str:
        where = where or keyword
        if ds is None:
            return ""
        vr = _vr(keyword)
        if vr == "PN":
            return self.names(ds, keyword)
        single_line = vr not in MULTI_LINE_VRS
        element = _element(ds, keyword)
        if element is None:  # absent, as most of the attributes an event copies are from most datasets
            return ""
        redecoded = _undeclared_escapes(ds, element)
        if redecoded is not None:
            self._repair(where)
            return self._clip(clean_text(redecoded, single_line), keyword, where)
        value = _value_of(ds, element, keyword, self._charset(ds))
        if value is None:
            return ""
        if isinstance(value, PersonName):
            return self._clip(self._person_name(value, where), keyword, where, per_group=True)
        if isinstance(value, str | bytes) or not isinstance(value, Iterable):
            return self._clip(clean_text(str(value), single_line), keyword, where)
        return "\\".join(
            self._clip(clean_text(str(item), single_line), keyword, where) for item in self._values(value, where)
        )

    def _person_name(self, value: PersonName | str, where: str) -> str:
        if isinstance(value, PersonName) and isinstance(value.original_string, bytes):
            text, undeclared = decode_person_name(value.original_string, value.encodings or ())
            if undeclared:
                self._repair(where)
            return text
        return person_name(value)

    def names(self, ds: Dataset, keyword: str) -> str:
        values = self._raw_person_names(ds, keyword)
        if values is None:
            value = raw_value(ds, keyword)
            if value is None:
                return ""
            items = [value] if isinstance(value, PersonName | str) else self._values(value, keyword)
            values = [self._person_name(item, keyword) for item in items]
        return "\\".join(self._clip(v, keyword, keyword, per_group=True) for v in values if v)

    def _raw_person_names(self, ds: Dataset, keyword: str) -> list[str] | None:
        """A PN element's values decoded from its bytes as received, whole, then split; None once converted.

        Whole: a multi-byte character may hold 0x5C, 0x3D or 0x5E, which are delimiters only in the
        single-byte state (pydicom splits the bytes first, and keeps no faithful copy of them).
        """
        tag = tag_for_keyword(keyword)
        try:
            element = ds.get_item(tag, keep_deferred=True) if tag is not None else None
        except VALUE_ERRORS:
            return None
        if not isinstance(element, RawDataElement) or not isinstance(element.value, bytes):
            return None
        text, undeclared = decode_value(element.value.rstrip(b" \x00"), _encodings(ds))
        if undeclared:
            self._repair(keyword)
        return [clean_person_name(v) for v in self._values(text.split("\\"), keyword)]

    def codes(self, ds: Dataset, keyword: str) -> tuple[CodedValue, ...]:
        sequence = raw_value(ds, keyword) or ()
        codes = []
        try:
            items = list(sequence)
        except VALUE_ERRORS:
            return ()
        if len(items) > self.limits.max_items:
            self.mark_clipped(keyword)
            items = items[: self.limits.max_items]
        for item in items:
            code = (
                self.text(item, "CodeValue", f"{keyword}>CodeValue")
                or self.text(item, "LongCodeValue", f"{keyword}>LongCodeValue")
                or self.text(item, "URNCodeValue", f"{keyword}>URNCodeValue")
            )
            if code:
                fields = {
                    "code": code,
                    "scheme": self.text(item, "CodingSchemeDesignator", f"{keyword}>CodingSchemeDesignator"),
                    "meaning": self.text(item, "CodeMeaning", f"{keyword}>CodeMeaning"),
                }
                codes.append(CodedValue(**self.fit(CodedValue, fields, f"{keyword}>")))
        return tuple(codes)


def int_value(ds: Dataset, keyword: str) -> int | None:
    """An IS value as an int, or None: empty, malformed, or outside IS's signed 32-bit range."""
    value = raw_value(ds, keyword)
    try:
        number = int(value) if value not in (None, "") else None
    except VALUE_ERRORS:
        return None
    return number if number is None or -(2**31) <= number < 2**31 else None


def person_name(value: PersonName | str | None) -> str:
    """All component groups (alphabetic=ideographic=phonetic) as clean Unicode, trailing empty groups dropped.

    A PersonName read from bytes is decoded whole (:func:`domain.dicom_text.decode_person_name`), not
    from pydicom's components, which split the bytes on ``=`` before decoding.
    """
    if value is None:
        return ""
    if isinstance(value, PersonName):
        if isinstance(value.original_string, bytes):
            return decode_person_name(value.original_string, value.encodings or ())[0]
        try:
            return clean_person_name("=".join(value.components))
        except VALUE_ERRORS:
            return ""
    return clean_person_name(str(value))
