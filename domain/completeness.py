"""Completeness rules by source: how long a study's quiet period is, and which signals its senders are
trusted for (pure: no I/O).

A rule matches a *source* — the calling AE title and the modality of an instance — and says the quiet
period and the signals trusted from it. The table is one setting (``STUDYSTREAM_COMPLETENESS_RULES``),
rules separated by ``;``, the first that matches wins::

    ae=CT_SCANNER1,modality=CT:quiet=60s,trust=commitment+mpps; modality=CR:quiet=5s; *:quiet=30s

- match: ``ae=<AE title>`` (exact, as the sender calls itself) and/or ``modality=<CS>`` (any case), or
  ``*`` for every source;
- terms: ``quiet=<duration>`` (``90``, ``90s``, ``1.5m``, ``1h``; up to 7 days; left out: the
  ``quiet_period`` setting) and ``trust=<signal>+<signal>`` among ``commitment``, ``mpps``, ``stow``,
  or ``trust=none`` (left out: every signal);
- a source no rule matches: the ``quiet_period`` setting, every signal trusted (as without rules).

A study from several sources (two modalities, a workstation adding a report) waits the *longest* quiet
period among its sources' rules, and trusts a signal only when *every* source's rule trusts it. A study
remembers at most :data:`MAX_SOURCES` sources; one with more is judged by the whole table (the longest
quiet period of any rule or the default, the signals every rule trusts).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

import msgspec


class Signal(StrEnum):
    """The signals besides the quiet period that can complete a study, each trusted per source."""

    COMMITMENT = "commitment"  # Storage Commitment naming instances all in the study
    MPPS = "mpps"  # a Modality Performed Procedure Step set to COMPLETED
    STOW = "stow"  # one DICOMweb STOW-RS request as the study's boundary


class CompletedBy(StrEnum):
    """Which signal completed a study revision (recorded when the revision is sealed)."""

    NOT_YET = ""  # the revision is open
    QUIET_PERIOD = "quiet_period"
    COMMITMENT = "commitment"
    RESOLUTION = "resolution"  # an operator decided a patient conflict
    MPPS = "mpps"
    STOW = "stow"


ALL_SIGNALS: frozenset[Signal] = frozenset(Signal)
MAX_SOURCES = 16  # distinct (calling AE, modality) pairs a study header remembers
MAX_RULES = 256
MAX_TEXT_CHARS = 16_384
MAX_QUIET_SECONDS = 7 * 86_400.0

_AE_MAX = 16  # PS3.5: AE is at most 16 characters, no backslash, no control characters
_SYNTAX = set(";,:=*\\")
_MODALITY = re.compile(r"[A-Z0-9_]{1,16}")
_DURATION = re.compile(r"([0-9]{1,7}(?:\.[0-9]{1,3})?)([smh]?)")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


class Source(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """Who sent instances of a study: the calling AE title and the modality (as the events carry them)."""

    calling_ae: str = ""
    modality: str = ""


@dataclass(frozen=True, slots=True)
class CompletenessRule:
    """One row of the table; ``None`` matches anything / takes the default."""

    calling_ae: str | None = None
    modality: str | None = None  # upper case
    quiet_period: float | None = None  # seconds; None: the ``quiet_period`` setting
    trusted: frozenset[Signal] = ALL_SIGNALS

    def matches(self, calling_ae: str, modality: str) -> bool:
        return (self.calling_ae is None or self.calling_ae == calling_ae.strip()) and (
            self.modality is None or self.modality == modality.strip().upper()
        )

    def covers(self, other: CompletenessRule) -> bool:
        """Whether every source ``other`` matches is matched by this rule too (``other`` never applies after it)."""
        return (self.calling_ae is None or self.calling_ae == other.calling_ae) and (
            self.modality is None or self.modality == other.modality
        )


@dataclass(frozen=True, slots=True)
class Completeness:
    """The decision for one study: its quiet period and the signals trusted from all of its sources."""

    quiet_period: float
    trusted_signals: frozenset[Signal] = ALL_SIGNALS

    def trusts(self, signal: Signal) -> bool:
        return signal in self.trusted_signals


def rule_for(rules: Sequence[CompletenessRule], calling_ae: str, modality: str) -> CompletenessRule | None:
    """The first rule matching a source; ``None`` when none does (the defaults apply)."""
    return next((rule for rule in rules if rule.matches(calling_ae, modality)), None)


@dataclass(frozen=True, slots=True)
class CompletenessPolicy:
    """The rules table with the default quiet period (``STUDYSTREAM_QUIET_PERIOD``) for sources no rule matches."""

    rules: tuple[CompletenessRule, ...]
    default_quiet_period: float

    def decide(self, sources: Iterable[Source], overflow: bool = False) -> Completeness:
        """The completeness of a study from these sources (none known: as one source no specific rule matches)."""
        if overflow:
            chosen: list[CompletenessRule | None] = [*self.rules, None]
        else:
            chosen = [rule_for(self.rules, s.calling_ae, s.modality) for s in sources] or [rule_for(self.rules, "", "")]
        default = self.default_quiet_period
        quiet = max(default if r is None or r.quiet_period is None else r.quiet_period for r in chosen)
        trusted = ALL_SIGNALS.intersection(*(ALL_SIGNALS if r is None else r.trusted for r in chosen))
        return Completeness(quiet, trusted)


def add_source(sources: tuple[Source, ...], calling_ae: str, modality: str) -> tuple[tuple[Source, ...], bool]:
    """The sources after one more instance, and whether one was left out (more than :data:`MAX_SOURCES`)."""
    source = Source(calling_ae.strip(), modality.strip().upper())
    if source in sources:
        return sources, False
    if len(sources) >= MAX_SOURCES:
        return sources, True
    return (*sources, source), False


# --- The setting's text ------------------------------------------------------------------------------


def _shown(text: str) -> str:
    return repr(text if len(text) <= 60 else f"{text[:57]}...")


def _parse_ae(value: str) -> str:
    ae = value.strip()
    if not ae or len(ae) > _AE_MAX:
        raise ValueError(f"ae {_shown(value)} must be 1 to {_AE_MAX} characters")
    if any(not (" " <= c <= "~") or c in _SYNTAX for c in ae):
        raise ValueError(f"ae {_shown(value)}: printable ASCII only, without ; , : = * or backslash")
    return ae


def _parse_modality(value: str) -> str:
    modality = value.strip().upper()
    if not _MODALITY.fullmatch(modality):
        raise ValueError(f"modality {_shown(value)} must be a DICOM modality code (letters, digits, _; e.g. CT)")
    return modality


def _parse_match(text: str) -> tuple[str | None, str | None]:
    if text.strip() == "*":
        return None, None
    found: dict[str, str] = {}
    for condition in text.split(","):
        key, sep, value = condition.partition("=")
        key = key.strip().lower()
        if not sep or key not in ("ae", "modality"):
            raise ValueError(f"match {_shown(condition.strip())}: expected ae=<AE title>, modality=<code> or *")
        if key in found:
            raise ValueError(f"{key} given twice")
        found[key] = _parse_ae(value) if key == "ae" else _parse_modality(value)
    return found.get("ae"), found.get("modality")


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``1.5m``, ``1h`` → seconds (rounded to milliseconds), above 0 and at most 7 days."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"quiet {_shown(text)} is not a duration (e.g. 5s, 1.5m, 1h, 90)")
    seconds = round(float(match.group(1)) * _UNITS[match.group(2)], 3)
    if not 0 < seconds <= MAX_QUIET_SECONDS:
        raise ValueError(f"quiet {_shown(text)} must be above 0 and at most 7 days")
    return seconds


def _parse_trust(text: str) -> frozenset[Signal]:
    names = [name.strip().lower() for name in text.split("+")]
    if names == ["none"]:
        return frozenset()
    known = {s.value: s for s in Signal}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"trust {_shown(text)}: unknown signal {_shown(unknown[0])} (commitment, mpps, stow or none)")
    return frozenset(known[name] for name in names)


def _parse_terms(text: str) -> tuple[float | None, frozenset[Signal]]:
    found: dict[str, str] = {}
    for term in text.split(","):
        key, sep, value = term.partition("=")
        key = key.strip().lower()
        if not sep or key not in ("quiet", "trust"):
            raise ValueError(f"term {_shown(term.strip())}: expected quiet=<duration> or trust=<signals>")
        if key in found:
            raise ValueError(f"{key} given twice")
        found[key] = value
    quiet = parse_duration(found["quiet"]) if "quiet" in found else None
    return quiet, _parse_trust(found["trust"]) if "trust" in found else ALL_SIGNALS


def _parse_rule(text: str) -> CompletenessRule:
    match, sep, terms = text.partition(":")
    if not sep:
        raise ValueError("expected <match>:<terms>, e.g. modality=CR:quiet=5s")
    calling_ae, modality = _parse_match(match)
    quiet, trusted = _parse_terms(terms)
    return CompletenessRule(calling_ae, modality, quiet, trusted)


def parse_rules(text: str) -> tuple[CompletenessRule, ...]:
    """The rules of the setting's text (see the module doc); ``ValueError`` naming the rule at fault.

    Strict: an unknown key or signal, a malformed value, a key given twice, or a rule that can never
    apply (an earlier rule matches every source it matches) is an error, so a typo stops the start
    instead of silently falling back to the default.
    """
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(f"completeness rules longer than {MAX_TEXT_CHARS} characters")
    if not text.isascii():
        raise ValueError("completeness rules must be ASCII (AE titles and modality codes are)")
    pieces = [piece for piece in text.split(";") if piece.strip()]
    if len(pieces) > MAX_RULES:
        raise ValueError(f"more than {MAX_RULES} completeness rules")
    rules: list[CompletenessRule] = []
    for number, piece in enumerate(pieces, start=1):
        try:
            rule = _parse_rule(piece)
        except ValueError as exc:
            raise ValueError(f"completeness rule {number} ({_shown(piece.strip())}): {exc}") from None
        earlier = next((i for i, known in enumerate(rules, start=1) if known.covers(rule)), None)
        if earlier is not None:
            raise ValueError(
                f"completeness rule {number} ({_shown(piece.strip())}) never applies: rule {earlier} matches "
                "every source it matches (put the narrower rule first)"
            )
        rules.append(rule)
    return tuple(rules)


def format_quiet(seconds: float) -> str:
    return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"


def format_rule(rule: CompletenessRule) -> str:
    match = ",".join(
        f"{key}={value}" for key, value in (("ae", rule.calling_ae), ("modality", rule.modality)) if value is not None
    )
    terms = [] if rule.quiet_period is None else [f"quiet={format_quiet(rule.quiet_period)}"]
    if rule.trusted != ALL_SIGNALS:
        terms.append("trust=" + ("+".join(sorted(rule.trusted)) or "none"))
    return f"{match or '*'}:{','.join(terms) or 'trust=' + '+'.join(sorted(ALL_SIGNALS))}"


def format_rules(rules: Iterable[CompletenessRule]) -> str:
    """The canonical text of a table: :func:`parse_rules` gives the same rules back."""
    return "; ".join(format_rule(rule) for rule in rules)
