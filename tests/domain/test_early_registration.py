"""Early registration (``fhir_early_registration``): when a study is announced as ``registered``, and why
the announcement can never replace the complete revision on the server."""

from __future__ import annotations

from msgspec.structs import replace

from domain import study as rules
from domain.fhir_mapping import StoredStudy, build_transaction_bundle, is_newer, stored_revision
from domain.mapping_options import MappingOptions
from domain.ready import build_study_ready, decode_study_ready, encode_study_ready
from domain.study_state import Arrival, PatientSeen, StudyHeader, decode_header, encode_header
from tests.factories import SyntheticStudy, make_ready

FIRST = 1000.0
DELAY = 5.0


def receiving(instances: int = 2) -> StudyHeader:
    header = None
    for offset, event in enumerate(SyntheticStudy(1, instances).events(), start=1):
        header = rules.apply_instance(header, None, None, event, Arrival(FIRST + offset, FIRST, 0, offset)).header
    assert header is not None
    return header


def test_a_study_is_due_for_registration_the_delay_after_its_first_instance_and_only_once() -> None:
    header = receiving()
    assert header.first_wall_time == FIRST + 1  # the first instance, not the latest
    assert not rules.registration_due(header, FIRST + 1 + DELAY - 0.1, DELAY)
    assert rules.registration_due(header, FIRST + 1 + DELAY, DELAY)
    assert not rules.registration_due(header, FIRST + 1 + DELAY, None)  # off
    registered = rules.mark_registered(header, "2026-12-01T10:00:00.000Z")
    assert not rules.registration_due(registered, FIRST + 100, DELAY)
    assert rules.needs_check(header, FIRST + 1 + DELAY, 300.0, registration_delay=DELAY)
    assert not rules.needs_check(header, FIRST + 1 + DELAY, 300.0)


def test_no_registration_for_a_later_revision_a_sealed_one_or_one_holding_two_patients() -> None:
    header = receiving()
    now = FIRST + 100
    assert not rules.registration_due(replace(header, revision=2), now, DELAY)
    assert not rules.registration_due(replace(header, published_revision=1), now, DELAY)
    assert not rules.registration_due(rules.mark_sealed(header, "2026-12-01T10:00:00.000Z"), now, DELAY)
    two = (PatientSeen("a", 1), PatientSeen("b", 1))
    assert not rules.registration_due(replace(header, patients=two), now, DELAY)


def test_the_registered_and_registration_fields_survive_encoding() -> None:
    header = rules.mark_registered(receiving(), "2026-12-01T10:00:00.000Z")
    assert decode_header(encode_header(header)) == header
    record = build_study_ready(header, [], [], ready_at="2026-12-01T10:00:00.000Z", registration=True)
    assert decode_study_ready(encode_study_ready(record)).registration is True


def test_a_registration_is_revision_zero_so_it_never_replaces_a_complete_revision() -> None:
    complete = make_ready(revision=1)
    registration = replace(complete, registration=True)
    assert registration.version == (1, 0) and complete.version == (1, 1)
    options = MappingOptions()
    early = build_transaction_bundle(registration, options)
    (study,) = [e["resource"] for e in early["entry"] if e["resource"]["resourceType"] == "ImagingStudy"]
    assert study["status"] == "registered"
    assert stored_revision(study, options) == (1, 0)
    final = build_transaction_bundle(complete, options)
    (done,) = [e["resource"] for e in final["entry"] if e["resource"]["resourceType"] == "ImagingStudy"]
    assert done["status"] == "available"
    assert is_newer(complete.version, StoredStudy("1", "1", (1, 0)))
    assert not is_newer(registration.version, StoredStudy("1", "2", (1, 1)))
