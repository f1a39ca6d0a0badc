"""A study never changes patient silently: identities counted per instance, conflicts held, corrections applied.

Pure rules of :mod:`domain.study` and :mod:`domain.patient`, event by event as the aggregator applies them.
"""

from __future__ import annotations

import pytest
from msgspec.structs import replace

from domain import study as rules
from domain.batch import BatchState, apply_event, apply_resolution
from domain.errors import InvalidRecordError
from domain.events import InstanceEvent, PatientResolution
from domain.patient import PATIENT_OF_STUDY_SYSTEM, IdentityOptions, identity_key, issuer_system, universal_system
from tests.domain.test_study import PARTITION, MemoryTables
from tests.factories import SyntheticStudy

OPTIONS = IdentityOptions(default_system="urn:site:default")


class Study:
    """One study applied record by record through a batch per record, as the aggregator does."""

    def __init__(self, identity: IdentityOptions = OPTIONS) -> None:
        self.tables = MemoryTables()
        self.identity = identity
        self.offset = 0

    def _batch(self) -> BatchState:
        return BatchState(self.tables, self.identity)

    def _write(self, batch: BatchState) -> None:
        for pending in batch.studies.values():
            self.tables.rows[("h", pending.header.study.uid)] = pending.header
            for series in pending.series.values():
                self.tables.rows[("s", pending.header.study.uid, series.uid)] = series
            for instance in pending.instances.values():
                self.tables.rows[("i", pending.header.study.uid, instance.uid)] = instance

    def apply(self, event: InstanceEvent, event_time: float | None = None) -> None:
        self.offset += 1
        batch = self._batch()
        at = rules.Arrival(1000.0 + self.offset, event_time or 1000.0 + self.offset, PARTITION, self.offset)
        apply_event(batch, event, at, max_instances=1000)
        self._write(batch)

    def resolve(self, study_uid: str, key: str) -> bool:
        self.offset += 1
        batch = self._batch()
        changed = apply_resolution(batch, PatientResolution(study_uid, key), PARTITION, self.offset)
        self._write(batch)
        return changed

    @property
    def header(self) -> rules.StudyHeader:
        return next(v for k, v in self.tables.rows.items() if k[0] == "h")


def key_of(patient_id: str, issuer: str = "HOSP") -> str:
    return identity_key(issuer_system(issuer, OPTIONS.default_system, OPTIONS.local_issuer_prefix), patient_id)


def test_a_second_patient_in_a_study_makes_a_conflict_that_counts_both_and_keeps_the_first() -> None:
    study = SyntheticStudy(series=1, per_series=3)
    first, second, third = study.events()
    state = Study()
    state.apply(replace(first, patient_id="P1", patient_name="One^Pat"))
    state.apply(replace(second, patient_id="P1", patient_name="One^Pat"))
    assert not rules.in_conflict(state.header)
    state.apply(replace(third, patient_id="P2", patient_name="Two^Pat"))
    header = state.header
    assert rules.in_conflict(header)
    assert [(p.key, p.instances) for p in header.patients] == [(key_of("P1"), 2), (key_of("P2"), 1)]
    assert (header.patient.id, header.patient_key) == ("P1", key_of("P1"))  # filed as before, not uploaded
    assert header.instance_count == 3


def test_same_id_from_another_issuer_is_another_patient_but_an_issuer_spelled_as_oid_or_urn_is_one() -> None:
    study = SyntheticStudy(series=1, per_series=3)
    a, b, c = study.events()
    state = Study()
    state.apply(replace(a, patient_id="P1", issuer_of_patient_id="1.2.3"))
    state.apply(replace(b, patient_id="P1", issuer_of_patient_id="urn:oid:1.2.3"))
    assert not rules.in_conflict(state.header)
    state.apply(replace(c, patient_id="P1", issuer_of_patient_id="OTHERHOSP"))
    assert rules.in_conflict(state.header)


def test_a_corrected_resend_of_every_instance_ends_the_conflict_and_files_the_study_under_the_new_patient() -> None:
    study = SyntheticStudy(series=1, per_series=2)
    first, second = study.events()
    state = Study()
    state.apply(replace(first, patient_id="WRONG", sha256="a" * 64))
    state.apply(replace(second, patient_id="RIGHT", sha256="b" * 64))
    assert rules.in_conflict(state.header)
    state.apply(replace(first, patient_id="RIGHT", sha256="c" * 64))  # the modality re-sent it, corrected
    header = state.header
    assert not rules.in_conflict(header)
    assert [(p.key, p.instances) for p in header.patients] == [(key_of("RIGHT"), 2)]
    assert header.patient.id == "RIGHT" and header.instance_count == 2


def test_the_latest_instance_s_demographics_win_for_the_same_patient() -> None:
    study = SyntheticStudy(series=1, per_series=3)
    a, b, c = study.events()
    state = Study()
    state.apply(replace(a, patient_name="Smyth^Jon", birth_date="19700101"), event_time=100.0)
    state.apply(replace(b, patient_name="Smith^John", birth_date=""), event_time=200.0)
    state.apply(replace(c, patient_name="Smyth^Jon", birth_date="19800101"), event_time=150.0)  # an older event
    patient = state.header.patient
    assert (patient.name, patient.birth_date) == ("Smith^John", "19700101")
    assert [p.patient.name for p in state.header.patients] == ["Smith^John"]


def test_an_operator_resolution_files_the_study_under_the_chosen_identity_and_makes_it_ready_at_once() -> None:
    study = SyntheticStudy(series=1, per_series=3)
    a, b, c = study.events()
    state = Study()
    state.apply(replace(a, patient_id="P1"))
    state.apply(replace(b, patient_id="P2", patient_name="Chosen^One"))
    state.tables.rows[("h", study.uid)] = rules.mark_conflict(state.header, "2024-05-01T10:00:00.000Z")
    assert state.resolve(study.uid, key_of("P2"))
    header = state.header
    assert not rules.in_conflict(header)
    assert (header.patient.id, header.patient.name, header.patient_key) == ("P2", "Chosen^One", key_of("P2"))
    assert (header.status, header.revision, header.ready_now) == (rules.StudyStatus.RECEIVING, 2, True)
    assert rules.is_ready(header, 0.0, None, quiet_period=3600)  # no quiet period after a decision
    assert not state.resolve(study.uid, key_of("P2"))  # nothing left to decide
    state.apply(replace(c, patient_id="P3"))  # an identity the resolution did not cover
    assert rules.in_conflict(state.header)


def test_a_resolution_naming_an_identity_the_study_does_not_hold_is_an_invalid_record() -> None:
    study = SyntheticStudy(series=1, per_series=2)
    a, b = study.events()
    state = Study()
    state.apply(replace(a, patient_id="P1"))
    state.apply(replace(b, patient_id="P2"))
    with pytest.raises(InvalidRecordError) as raised:
        state.resolve(study.uid, key_of("P9"))
    assert raised.value.reason == "unknown_patient_key"
    with pytest.raises(InvalidRecordError):
        Study().resolve(study.uid, key_of("P1"))  # a study never seen


def test_a_calling_ae_map_joins_one_site_s_modalities_and_keeps_two_sites_apart() -> None:
    site = IdentityOptions("urn:site:default", system_by_ae={"CT1": "urn:oid:1.1", "MR1": "urn:oid:1.1"})
    study = SyntheticStudy(series=1, per_series=3)
    a, b, c = study.events()
    state = Study(site)
    state.apply(replace(a, patient_id="MRN7", issuer_of_patient_id="", calling_ae="CT1"))
    state.apply(replace(b, patient_id="MRN7", issuer_of_patient_id="", calling_ae="MR1"))
    assert not rules.in_conflict(state.header)
    state.apply(replace(c, patient_id="MRN7", issuer_of_patient_id="", calling_ae="OTHER_SITE"))
    assert rules.in_conflict(state.header)  # the same MRN from a site the map does not name


def test_a_header_of_state_schema_2_counts_every_instance_for_its_one_patient() -> None:
    study = SyntheticStudy(series=1, per_series=3)
    a, b, c = study.events()
    state = Study()
    state.apply(a)
    state.apply(b)
    legacy = replace(state.header, patients=(), patient_key="")
    state.tables.rows[("h", study.uid)] = legacy
    for key in [k for k in state.tables.rows if k[0] == "i"]:
        state.tables.rows[key] = replace(state.tables.rows[key], patient_key="")  # rows of schema 2
    state.apply(replace(b, patient_id="OTHER", sha256="f" * 64))  # a replaced version, another patient
    header = state.header
    assert [p.instances for p in header.patients] == [1, 1] and rules.in_conflict(header)
    state.apply(c)
    assert [p.instances for p in state.header.patients] == [2, 1]


@pytest.mark.parametrize(
    ("universal", "kind", "expected"),
    [
        ("1.2.840.113619", "ISO", "urn:oid:1.2.840.113619"),
        ("urn:oid:1.2.3", "ISO", "urn:oid:1.2.3"),
        ("6F9619FF-8B86-D011-B42D-00C04FC964FF", "UUID", "urn:uuid:6f9619ff-8b86-d011-b42d-00c04fc964ff"),
        ("https://mpi.example.org/ids", "URI", "https://mpi.example.org/ids"),
        ("hospital.example.org", "DNS", None),  # no URI form: the local name is used
        ("not-an-oid", "ISO", None),
        ("", "ISO", None),
    ],
)
def test_universal_entity_ids_by_their_type(universal: str, kind: str, expected: str | None) -> None:
    assert universal_system(universal, kind) == expected


def test_a_universal_issuer_wins_over_the_local_name_and_no_patient_id_is_a_patient_of_the_study() -> None:
    assert issuer_system("HOSP", "d", "p:", "1.2.3", "ISO") == "urn:oid:1.2.3"
    assert issuer_system("HOSP", "d", "p:", "x.example", "DNS") == "p:HOSP"
    assert issuer_system("", "d", "p:") == "d"
    study = SyntheticStudy(series=1, per_series=1)
    (event,) = study.events()
    state = Study()
    state.apply(replace(event, patient_id=""))
    expected = identity_key(PATIENT_OF_STUDY_SYSTEM, f"urn:oid:{study.uid}")
    assert state.header.patient_key == expected
