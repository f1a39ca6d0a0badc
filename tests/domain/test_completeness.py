"""domain.completeness: the rules table's text, matching a source, and the decision for a study (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.completeness import (
    ALL_SIGNALS,
    MAX_SOURCES,
    CompletenessPolicy,
    CompletenessRule,
    Signal,
    Source,
    add_source,
    format_rules,
    parse_duration,
    parse_rules,
    rule_for,
)

EXAMPLE = "ae=CT_SCANNER1,modality=CT:quiet=60s,trust=commitment+mpps; modality=CR:quiet=5s; *:quiet=30s"
DEFAULT_QUIET = 45.0


def test_the_documented_example_parses_to_three_rules() -> None:
    ct, cr, rest = parse_rules(EXAMPLE)
    assert ct == CompletenessRule("CT_SCANNER1", "CT", 60.0, frozenset({Signal.COMMITMENT, Signal.MPPS}))
    assert cr == CompletenessRule(None, "CR", 5.0, ALL_SIGNALS)
    assert rest == CompletenessRule(None, None, 30.0, ALL_SIGNALS)
    assert format_rules(parse_rules(EXAMPLE)) == EXAMPLE


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("modality=cr:quiet=5", CompletenessRule(None, "CR", 5.0)),  # modality in any case; seconds by default
        (" AE = MOD1 : QUIET = 1.5m ", CompletenessRule("MOD1", None, 90.0)),  # keys in any case, spaces around
        ("ae=MOD 1:quiet=1h", CompletenessRule("MOD 1", None, 3600.0)),  # an AE title may hold a space
        ("modality=SR:trust=none", CompletenessRule(None, "SR", None, frozenset())),
        ("*:trust=stow+commitment", CompletenessRule(None, None, None, frozenset({Signal.STOW, Signal.COMMITMENT}))),
        ("modality=MG,ae=MAMMO:quiet=0.25s", CompletenessRule("MAMMO", "MG", 0.25)),
    ],
)
def test_accepted_forms(text: str, rule: CompletenessRule) -> None:
    assert parse_rules(text) == (rule,)


def test_empty_text_and_empty_pieces_are_no_rules() -> None:
    assert parse_rules("") == ()
    assert parse_rules(" ; \n;") == ()
    assert parse_rules("modality=CR:quiet=5s;\n modality=DX:quiet=5s;\n") == (
        CompletenessRule(None, "CR", 5.0),
        CompletenessRule(None, "DX", 5.0),
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("modality=CR", "expected <match>:<terms>"),
        ("modality=CR:", "term ''"),
        ("modality=CR:quiet=5x", "not a duration"),
        ("modality=CR:quiet=0", "above 0"),
        ("modality=CR:quiet=8d", "not a duration"),
        ("modality=CR:quiet=169h", "at most 7 days"),
        ("modality=CR:quiet=-5", "not a duration"),
        ("modality=CR:quiet=1e3", "not a duration"),
        ("modality=CR:quiet=nan", "not a duration"),
        ("modality=CR:quiet=5s,quiet=6s", "quiet given twice"),
        ("modality=CR:trust=commitment+dicomweb", "unknown signal 'dicomweb'"),
        ("modality=CR:trust=", "unknown signal ''"),
        ("modality=CR:trust=none+mpps", "unknown signal 'none'"),
        ("modality=CR:wait=5s", "term 'wait=5s'"),
        ("station=CR:quiet=5s", "match 'station=CR'"),
        ("modality=C-R:quiet=5s", "DICOM modality code"),
        ("modality=:quiet=5s", "DICOM modality code"),
        ("ae=:quiet=5s", "1 to 16 characters"),
        ("ae=ABCDEFGHIJKLMNOPQ:quiet=5s", "1 to 16 characters"),
        ("ae=CT*:quiet=5s", "printable ASCII only"),
        ("ae=CT\\1:quiet=5s", "printable ASCII only"),
        ("ae=CT\t1:quiet=5s", "printable ASCII only"),
        ("ae=CT1,ae=CT2:quiet=5s", "ae given twice"),
        ("ae=CT1:quiet=5s:trust=none", "not a duration"),
        ("modality=CR:quiet=5s; modality=cr:quiet=9s", "rule 2 ('modality=cr:quiet=9s') never applies: rule 1"),
        ("modality=CR:quiet=5s; ae=X,modality=CR:quiet=9s", "never applies: rule 1"),
        ("*:quiet=5s; modality=CR:quiet=9s", "never applies: rule 1"),
        ("modality=ſR:quiet=5s", "must be ASCII"),  # U+017F upper-cases to S: refused, not read as SR
        ("modality=CR:quiet=٥s", "must be ASCII"),  # an Arabic-Indic digit float() would accept
    ],
)
def test_malformed_rules_are_refused_with_the_rule_and_the_fault_named(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"completeness rules?") as raised:
        parse_rules(text)
    assert message in str(raised.value)


def test_limits_on_size() -> None:
    many = "; ".join(f"ae=A{i}:quiet=5s" for i in range(257))
    with pytest.raises(ValueError, match="more than 256"):
        parse_rules(many)
    with pytest.raises(ValueError, match="longer than"):
        parse_rules("*:quiet=5s;" * 2000)


def test_durations() -> None:
    assert [parse_duration(t) for t in ("90", "90s", "1.5m", "1h", "0.001s", "168h")] == [
        90.0, 90.0, 90.0, 3600.0, 0.001, 604800.0,
    ]  # fmt: skip


def test_the_first_matching_rule_wins() -> None:
    rules = parse_rules("ae=CT1,modality=CT:quiet=60s; ae=CT1:quiet=20s; modality=CT:quiet=40s")
    assert rule_for(rules, "CT1", "CT") is rules[0]
    assert rule_for(rules, " CT1 ", "ct") is rules[0]  # values as the events carry them (padding, case)
    assert rule_for(rules, "CT1", "SR") is rules[1]  # the scanner's dose report
    assert rule_for(rules, "CT2", "CT") is rules[2]
    assert rule_for(rules, "ct1", "MR") is None  # AE titles are exact
    assert rule_for(rules, "", "") is None


def test_a_study_from_several_sources_waits_the_longest_and_trusts_what_every_source_is_trusted_for() -> None:
    policy = CompletenessPolicy(
        parse_rules("modality=CR:quiet=5s; ae=WS:quiet=10s,trust=none; ae=CT1:quiet=60s,trust=commitment+mpps"),
        DEFAULT_QUIET,
    )
    assert policy.decide([Source("CR1", "CR")]).quiet_period == 5.0
    assert policy.decide([Source("CR1", "CR")]).trusted_signals == ALL_SIGNALS
    both = policy.decide([Source("CR1", "CR"), Source("CT1", "CT")])
    assert (both.quiet_period, both.trusted_signals) == (60.0, frozenset({Signal.COMMITMENT, Signal.MPPS}))
    with_workstation = policy.decide([Source("CR1", "CR"), Source("WS", "KO")])
    assert (with_workstation.quiet_period, with_workstation.trusted_signals) == (10.0, frozenset())
    assert not with_workstation.trusts(Signal.COMMITMENT)
    # A source no rule matches brings the default quiet period and trusts everything.
    unmatched = policy.decide([Source("CR1", "CR"), Source("MR1", "MR")])
    assert (unmatched.quiet_period, unmatched.trusted_signals) == (DEFAULT_QUIET, ALL_SIGNALS)


def test_no_sources_known_is_one_source_only_a_catch_all_matches() -> None:
    assert CompletenessPolicy((), DEFAULT_QUIET).decide([]).quiet_period == DEFAULT_QUIET
    policy = CompletenessPolicy(parse_rules("modality=CR:quiet=5s; *:quiet=20s,trust=none"), DEFAULT_QUIET)
    assert (policy.decide([]).quiet_period, policy.decide([]).trusted_signals) == (20.0, frozenset())


def test_too_many_sources_are_judged_by_the_whole_table() -> None:
    policy = CompletenessPolicy(parse_rules("modality=CR:quiet=5s; ae=CT1:quiet=90s,trust=mpps"), DEFAULT_QUIET)
    judged = policy.decide([Source("CR1", "CR")], overflow=True)
    assert (judged.quiet_period, judged.trusted_signals) == (90.0, frozenset({Signal.MPPS}))
    sources: tuple[Source, ...] = ()
    for i in range(MAX_SOURCES):
        sources, overflow = add_source(sources, f"AE{i}", "ct")
        assert not overflow
    assert sources[0] == Source("AE0", "CT")
    assert add_source(sources, "AE0", "CT") == (sources, False)  # known: nothing changes
    assert add_source(sources, "AE99", "CT") == (sources, True)


# --- Hostile text (the setting is a trust boundary) ------------------------------------------------

TOKENS = st.sampled_from(
    ["ae", "modality", "quiet", "trust", "=", ":", ",", ";", "*", "+", " ", "CT", "cr", "5", "5s", "1.5m", "0", "h",
     "none", "commitment", "mpps", "stow", "\\", "\t", "\n", "é", "\x00", "-", "."]
)  # fmt: skip


@given(st.one_of(st.text(max_size=200), st.lists(TOKENS, max_size=40).map("".join)))
def test_any_text_parses_to_rules_or_is_a_value_error(text: str) -> None:
    try:
        rules = parse_rules(text)
    except ValueError as exc:
        assert str(exc)
        return
    assert parse_rules(format_rules(rules)) == rules  # what parses has a canonical text that parses the same
    for rule in rules:
        assert rule.quiet_period is None or 0 < rule.quiet_period <= 7 * 86400
        assert rule.trusted <= ALL_SIGNALS


AE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters=";,:=*\\"), max_size=16)
RULES = st.lists(
    st.builds(
        CompletenessRule,
        calling_ae=st.one_of(st.none(), AE.map(str.strip).filter(bool)),
        modality=st.one_of(st.none(), st.from_regex(r"[A-Z0-9_]{1,16}", fullmatch=True)),
        quiet_period=st.one_of(st.none(), st.integers(1, 604_800_000).map(lambda ms: ms / 1000)),
        trusted=st.frozensets(st.sampled_from(list(Signal))),
    ),
    max_size=8,
)


@given(RULES)
def test_a_table_s_canonical_text_parses_back_to_it(rules: list[CompletenessRule]) -> None:
    reachable: list[CompletenessRule] = []
    for rule in rules:
        if not any(known.covers(rule) for known in reachable):
            reachable.append(rule)
    assert parse_rules(format_rules(reachable)) == tuple(reachable)
