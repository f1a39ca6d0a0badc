"""domain.readiness with the completeness rules: per-source quiet periods, commitment trust, completed_by."""

from __future__ import annotations

from msgspec.structs import replace

from domain import study as rules
from domain.completeness import CompletedBy, CompletenessPolicy, Source, parse_rules
from domain.ready import build_study_ready, decode_study_ready, encode_study_ready
from domain.study import mark_sealed, needs_check, ready_signal, request_commitment, resolve_patient
from domain.study_state import STATE_SCHEMA_VERSION, Arrival, StudyHeader, decode_header, encode_header
from tests.factories import SyntheticStudy, make_event

POLICY = CompletenessPolicy(
    parse_rules("modality=CR:quiet=2s; ae=CT1,modality=CT:quiet=60s,trust=commitment; ae=OLD_PACS:trust=none"),
    30.0,
)
WALL = 1000.0


def received(modality: str, calling_ae: str, instances: int = 2) -> StudyHeader:
    """A study of ``instances`` instances from one source, the last processed at ``WALL``."""
    study = SyntheticStudy(1, instances)
    header = None
    for offset, event in enumerate(study.events(), start=1):
        event = replace(event, modality=modality, calling_ae=calling_ae)
        header = rules.apply_instance(header, None, None, event, Arrival(WALL, WALL, 0, offset)).header
    assert header is not None
    return header


def decide(header: StudyHeader, seconds_later: float) -> CompletedBy | None:
    now = WALL + seconds_later
    return ready_signal(header, now, now, POLICY.decide(header.sources, header.sources_overflow))


def test_the_header_remembers_each_source_once_across_revisions() -> None:
    header = received("cr", " CR_ROOM2 ")
    assert header.sources == (Source("CR_ROOM2", "CR"),)  # as matched: trimmed, modality upper case
    study_uid, series_uid = header.study.uid, "1.2.3.9"
    report = make_event(study_uid, series_uid, 1, modality="SR", calling_ae="WS1")
    later = rules.apply_instance(
        rules.mark_published(mark_sealed(header, "t")), None, None, report, Arrival(0, 0, 0, 9)
    )
    assert later.header.revision == 2
    assert later.header.sources == (Source("CR_ROOM2", "CR"), Source("WS1", "SR"))


def test_each_study_waits_its_own_source_s_quiet_period() -> None:
    cr, ct, other = received("CR", "CR1"), received("CT", "CT1"), received("MR", "MR1")
    assert decide(cr, 1.9) is None
    assert decide(cr, 2.0) is CompletedBy.QUIET_PERIOD
    assert decide(ct, 30.0) is None and decide(ct, 60.0) is CompletedBy.QUIET_PERIOD
    assert decide(other, 29.0) is None and decide(other, 30.0) is CompletedBy.QUIET_PERIOD  # the default
    assert not needs_check(ct, WALL + 30.0, POLICY.decide(ct.sources).quiet_period)


def test_a_study_from_several_sources_waits_the_longest_quiet_period() -> None:
    mixed = replace(received("CR", "CR1"), sources=(Source("CR1", "CR"), Source("CT1", "CT")))
    assert decide(mixed, 2.0) is None
    assert decide(mixed, 60.0) is CompletedBy.QUIET_PERIOD


def test_commitment_completes_a_study_at_once_only_from_a_trusted_source() -> None:
    trusted = request_commitment(received("CT", "CT1"))
    assert decide(trusted, 0.0) is CompletedBy.COMMITMENT
    untrusted = request_commitment(received("CT", "OLD_PACS"))
    assert untrusted.commitment_requested
    completeness = POLICY.decide(untrusted.sources)
    assert decide(untrusted, 29.0) is None  # waits for the quiet period instead
    assert not needs_check(untrusted, WALL + 1, completeness.quiet_period, completeness.trusted_signals)
    assert decide(untrusted, 30.0) is CompletedBy.QUIET_PERIOD
    # One untrusted source among trusted ones: the commitment does not complete the study.
    mixed = replace(trusted, sources=(*trusted.sources, Source("OLD_PACS", "CT")))
    assert decide(mixed, 0.0) is None


def test_an_operator_s_resolution_is_recorded_as_such() -> None:
    header = received("CR", "CR1")
    key = header.patients[0].key
    resolved = resolve_patient(
        replace(header, patients=(*header.patients, replace(header.patients[0], key="x"))), key, 99
    )
    assert resolved is not None and decide(resolved, 0.0) is CompletedBy.RESOLUTION


def test_the_sealed_revision_records_its_signal_into_the_ready_record_and_the_next_revision_forgets_it() -> None:
    header = received("CR", "CR1")
    sealed = mark_sealed(header, "2027-01-01T00:00:00.000Z", CompletedBy.QUIET_PERIOD)
    assert decode_header(encode_header(sealed)).completed_by is CompletedBy.QUIET_PERIOD
    record = build_study_ready(sealed, [], [], ready_at=sealed.sealed_at)
    assert decode_study_ready(encode_study_ready(record)).completed_by == "quiet_period"
    published = rules.mark_published(sealed)
    late = make_event(header.study.uid, "1.2.3.9", 1, modality="CR", calling_ae="CR1")
    reopened = rules.apply_instance(published, None, None, late, Arrival(0, 0, 0, 99)).header
    assert (reopened.revision, reopened.completed_by) == (2, CompletedBy.NOT_YET)


def test_state_and_ready_records_written_before_schema_4_decode_with_no_sources_and_no_signal() -> None:
    header = received("CR", "CR1")
    assert header.schema_version == STATE_SCHEMA_VERSION == 4
    old = encode_header(header).replace(b',"sources":[["CR1","CR"]],"sources_overflow":false,"completed_by":""', b"")
    assert b"sources" not in old and b"completed_by" not in old
    decoded = decode_header(old)
    assert (decoded.sources, decoded.sources_overflow, decoded.completed_by) == ((), False, CompletedBy.NOT_YET)
    assert POLICY.decide(decoded.sources).quiet_period == 30.0  # judged as before: the default
    record = encode_study_ready(build_study_ready(header, [], [], ready_at="t"))
    assert decode_study_ready(record.replace(b',"completed_by":""', b"")).completed_by == ""
    # A newer aggregator's signal never makes the ready record undecodable.
    assert decode_study_ready(record.replace(b'"completed_by":""', b'"completed_by":"mpps"')).completed_by == "mpps"
