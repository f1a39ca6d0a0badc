"""DICOM dates and times → FHIR date and dateTime, in the site's local time (pure, no I/O).

A DICOM date and time without TimezoneOffsetFromUTC (0008,0201) is the local time of the site
that made it: it is read in the configured zone (``fhir_default_timezone``, by default the host's).
A wall time a DST change skips (a gap) or repeats (an overlap) gets the offset in force *before* the
change (Python's ``fold=0``): 02:30 on a spring-forward night stays 02:30 with the winter offset, and
the first of two 01:30s is the one meant. An offset outside −12:00…+14:00 or with minutes ≥ 60 is no
offset: the time is left out (the date alone is a valid FHIR dateTime) rather than shown in a wrong zone.
ACR-NEMA formats (``2004.01.19``, ``07:27:30``) are read as well.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_DA = re.compile(r"^(\d{4})\.?(\d{2})\.?(\d{2})$")  # YYYYMMDD, or ACR-NEMA YYYY.MM.DD
_TM = re.compile(r"^(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d{1,6}))?)?)?$")  # HHMMSS.FFFFFF, or HH:MM:SS
_TZ = re.compile(r"^([+-])(\d{2})(\d{2})$")
MIN_OFFSET = timedelta(hours=-12)
MAX_OFFSET = timedelta(hours=14)


def fhir_date(da: str) -> str | None:
    """DICOM DA ``YYYYMMDD`` (or ACR-NEMA ``YYYY.MM.DD``) → FHIR date; ``None`` if empty or not a real date."""
    match = _DA.match(da.strip())
    if not match:
        return None
    try:
        return date(*(int(g) for g in match.groups())).isoformat()
    except ValueError:
        return None


def parse_timezone_offset(value: str) -> timezone | None:
    """TimezoneOffsetFromUTC ``+HHMM``/``-HHMM`` → a fixed offset; ``None`` when empty, malformed or out of range."""
    match = _TZ.match(value.strip())
    if not match:
        return None
    sign, hours, minutes = match.groups()
    if int(minutes) >= 60:
        return None
    delta = timedelta(hours=int(hours), minutes=int(minutes))
    delta = -delta if sign == "-" else delta
    if not MIN_OFFSET <= delta <= MAX_OFFSET:
        return None
    return timezone(delta)


@lru_cache(maxsize=64)
def zone_of(name: str) -> tzinfo:
    """An IANA zone name (``Asia/Tokyo``) or a fixed ``+HHMM`` offset → a tzinfo; ``ValueError`` when unknown."""
    text = name.strip()
    if _TZ.match(text):
        fixed = parse_timezone_offset(text)
        if fixed is None:
            raise ValueError(f"time zone offset {text!r} is out of range (-1200 to +1400)")
        return fixed
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {text!r} (an IANA name such as Europe/Berlin, or +HHMM)") from None


def fhir_datetime(da: str, tm: str, tz_offset: str, default_timezone: str) -> str | None:
    """DICOM DA + TM (+ TimezoneOffsetFromUTC) → FHIR dateTime, by the rules of the module doc.

    Without a time (or with a malformed one, or a malformed offset) the result is the date alone.
    """
    day = fhir_date(da)
    if day is None:
        return None
    time_match = _TM.match(tm.strip())
    if not time_match:
        return day
    hh, mm, ss, frac = time_match.groups()
    try:
        local = datetime.fromisoformat(day).replace(
            hour=int(hh), minute=int(mm or 0), second=int(ss or 0), microsecond=int((frac or "0").ljust(6, "0"))
        )
    except ValueError:
        return day
    if tz_offset.strip():
        zone: tzinfo | None = parse_timezone_offset(tz_offset)
        if zone is None:
            return day  # a zone we cannot trust: no time rather than a wrong one
    else:
        zone = zone_of(default_timezone or "UTC")
    stamp = local.replace(tzinfo=zone, fold=0).isoformat(timespec="milliseconds" if frac else "seconds")
    return stamp[:-6] + "Z" if stamp.endswith("+00:00") else stamp
