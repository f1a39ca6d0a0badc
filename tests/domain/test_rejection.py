"""IOCM rejection notes: reading one from a dataset (hostile ones included), and what it does to the
study's state, its next revision and the ImagingStudy (pure, no Kafka)."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace
from pydicom.dataset import Dataset

from domain.batch import BatchState, apply_event
from domain.dicom_event import InstanceIdentity, Reception, check_identity, instance_event
from domain.dicom_reader import EventLimits
from domain.errors import InvalidRecordError
from domain.events import InstanceEvent, decode_instance_event, encode_instance_event
from domain.fhir_resources import build_imaging_study
from domain.mapping_options import MappingOptions
from domain.ready import StudyReady, build_study_ready, decode_study_ready, encode_study_ready
from domain.rejection import KEY_OBJECT_SELECTION, REJECTION_CODES
from domain.study import Arrival, StudyHeader, StudyStatus, mark_published, mark_sealed
from domain.uids import is_valid_uid
from scu import synth
from tests.conftest import unique_uid
from tests.domain.test_study import PARTITION, MemoryTables, batch_writes, commit
from tests.factories import SyntheticStudy, make_event

RECEPTION = Reception("1.2.840.10008.1.2.1", "PACS", "STUDYSTREAM", "127.0.0.1", "2026-12-01T00:00:00Z", "x", 1, "")


def note_event(ds: Dataset, limits: EventLimits | None = None) -> InstanceEvent:
    identity = check_identity(ds, ds.SOPClassUID, ds.SOPInstanceUID)
    return instance_event(ds, identity, RECEPTION, limits)


# --- Reading a note -----------------------------------------------------------------------------------


def test_a_rejection_note_carries_its_code_and_the_instances_of_its_study_it_names() -> None:
    images = synth.generate_studies(studies=1, series=2, instances=2)
    event = note_event(synth.rejection_note(images[:3], "113037"))
    assert event.rejection_code == "113037"
    assert event.rejected_uids == tuple(i.SOPInstanceUID for i in images[:3])
    assert event.instance_title == "Rejected for Patient Safety Reasons"
    assert decode_instance_event(encode_instance_event(event)) == event


def test_references_to_another_study_bad_uids_and_those_past_the_limit_are_not_read() -> None:
    images = synth.generate_studies(studies=1, series=1, instances=4)
    note = synth.rejection_note(images)
    other = Dataset()
    other.StudyInstanceUID = unique_uid()
    other.ReferencedSeriesSequence = note.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    note.CurrentRequestedProcedureEvidenceSequence.append(other)
    sops = note.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
    sops[0].ReferencedSOPInstanceUID = "not a uid"
    event = note_event(note, EventLimits(max_references=2))
    assert event.rejected_uids == (images[1].SOPInstanceUID, images[2].SOPInstanceUID)
    assert any("ReferencedSOPInstanceUID" in where for where in event.clipped)


@pytest.mark.parametrize(
    ("sop_class", "scheme", "code"),
    [
        (KEY_OBJECT_SELECTION, "DCM", "113000"),  # "Of Interest": a key-image note, not a rejection
        (KEY_OBJECT_SELECTION, "99LOCAL", "113001"),
        ("1.2.840.10008.5.1.4.1.1.88.11", "DCM", "113001"),  # an SR titled so is not a KOS
    ],
)
def test_only_a_key_object_selection_titled_with_a_dcm_rejection_code_rejects(
    sop_class: str, scheme: str, code: str
) -> None:
    images = synth.generate_studies(studies=1, series=1, instances=1)
    note = synth.rejection_note(images)
    note.SOPClassUID = note.file_meta.MediaStorageSOPClassUID = sop_class
    note.ConceptNameCodeSequence[0].CodingSchemeDesignator = scheme
    note.ConceptNameCodeSequence[0].CodeValue = code
    event = note_event(note)
    assert (event.rejection_code, event.rejected_uids) == ("", ())


hostile_text = st.one_of(
    st.sampled_from([*sorted(REJECTION_CODES), "", " 113001 ", "113001\\113037", "DCM"]),
    st.text(max_size=80),
)
hostile_uid = st.one_of(
    st.builds(unique_uid), st.text(max_size=100), st.sampled_from(["", "1..2", "1.2.", "0" * 65, "1.2\x00"])
)


@settings(max_examples=150, deadline=None)
@given(
    scheme=hostile_text,
    code=hostile_text,
    study_refs=st.lists(st.tuples(hostile_uid, st.lists(st.lists(hostile_uid, max_size=6), max_size=3)), max_size=3),
    own_study=st.booleans(),
    limit=st.integers(1, 8),
)
def test_a_hostile_note_gives_an_event_that_decodes_with_valid_bounded_references(
    scheme: str, code: str, study_refs: list[tuple[str, list[list[str]]]], own_study: bool, limit: int
) -> None:
    images = synth.generate_studies(studies=1, series=1, instances=1)
    note = synth.rejection_note(images)
    note.ConceptNameCodeSequence[0].CodingSchemeDesignator = scheme
    note.ConceptNameCodeSequence[0].CodeValue = code
    evidence = []
    for study_uid, series_list in study_refs:
        item = Dataset()
        item.StudyInstanceUID = note.StudyInstanceUID if own_study else study_uid
        item.ReferencedSeriesSequence = []
        for sops in series_list:
            series = Dataset()
            series.ReferencedSOPSequence = []
            for uid in sops:
                sop = Dataset()
                sop.ReferencedSOPInstanceUID = uid
                series.ReferencedSOPSequence.append(sop)
            item.ReferencedSeriesSequence.append(series)
        evidence.append(item)
    note.CurrentRequestedProcedureEvidenceSequence = evidence
    event = note_event(note, EventLimits(max_references=limit))
    assert decode_instance_event(encode_instance_event(event)) == event  # the aggregator's boundary accepts it
    assert event.rejection_code in ("", *REJECTION_CODES)
    assert len(event.rejected_uids) <= limit and all(is_valid_uid(u) for u in event.rejected_uids)
    assert event.rejection_code or not event.rejected_uids


# --- State and revisions ------------------------------------------------------------------------------


class Study:
    """One study's tables, applied batch by batch as the aggregator does."""

    def __init__(self) -> None:
        self.tables = MemoryTables()
        self.offset = 0

    def apply(self, *events: InstanceEvent) -> bool:
        """Whether the batch changed anything."""
        batch = BatchState(self.tables)
        changed = False
        for event in events:
            self.offset += 1
            at = Arrival(1000.0 + self.offset, 1000.0 + self.offset, PARTITION, self.offset)
            changed = apply_event(batch, event, at, max_instances=10_000) is not None or changed
        commit(self.tables, batch_writes(batch))
        return changed

    @property
    def header(self) -> StudyHeader:
        return next(v for k, v in self.tables.rows.items() if k[0] == "h")

    def publish(self) -> None:
        header = mark_published(mark_sealed(self.header, "2026-12-01T00:00:00.000Z"))
        self.tables.rows[("h", header.study.uid)] = header

    def ready(self, revision: int | None = None) -> StudyReady:
        header = self.header if revision is None else replace(self.header, revision=revision)
        rows = self.tables.rows.items()
        return build_study_ready(
            header, [v for k, v in rows if k[0] == "s"], [v for k, v in rows if k[0] == "i"], "2026-12-01T00:00:01Z"
        )


def rejection(study: SyntheticStudy, code: str, *rejected: InstanceEvent) -> InstanceEvent:
    return make_event(
        study.uid,
        f"{study.uid}.99",
        1,
        series_number=99,
        sop_class_uid=KEY_OBJECT_SELECTION,
        modality="KO",
        rejection_code=code,
        rejected_uids=tuple(e.sop_instance_uid for e in rejected),
    )


def test_a_note_after_publication_removes_its_instances_from_the_next_revision_only() -> None:
    synthetic = SyntheticStudy(series=2, per_series=2)
    events = synthetic.events()
    study = Study()
    study.apply(*events)
    study.publish()
    assert study.apply(rejection(synthetic, "113001", *events[:2]))
    assert (study.header.revision, study.header.status) == (2, StudyStatus.RECEIVING)
    ready = study.ready()
    assert (ready.number_of_series, ready.number_of_instances, ready.fhir_status) == (1, 2, "")
    assert {i.uid for s in ready.series for i in s.instances} == {e.sop_instance_uid for e in events[2:]}
    assert "KO" not in ready.modalities  # the note itself is not listed
    rebuilt = study.ready(revision=1)  # revision 1, rebuilt after a restart, is what was sealed
    assert (rebuilt.number_of_series, rebuilt.number_of_instances) == (2, 4)


def test_a_note_read_again_changes_nothing() -> None:
    synthetic = SyntheticStudy(series=1, per_series=2)
    events = synthetic.events()
    study = Study()
    note = rejection(synthetic, "113001", events[0])
    study.apply(*events, note)
    header, ready = study.header, study.ready()
    assert not study.apply(note)
    assert study.header == header and study.ready() == ready and ready.number_of_instances == 1


def test_instances_a_note_named_before_they_arrived_are_left_out_and_the_emptied_study_is_in_error() -> None:
    synthetic = SyntheticStudy(series=1, per_series=2)
    events = synthetic.events()
    study = Study()
    study.apply(rejection(synthetic, "113037", *events))
    assert study.header.rejection_codes == ("113037",)
    study.apply(*events)
    ready = study.ready()
    assert (ready.number_of_series, ready.number_of_instances, ready.fhir_status) == (0, 0, "entered-in-error")
    resource = build_imaging_study(decode_study_ready(encode_study_ready(ready)), MappingOptions(), "Patient/1")
    assert resource.status == "entered-in-error" and not resource.series and resource.numberOfInstances == 0


@pytest.mark.parametrize(
    ("code", "status"), [("113001", "cancelled"), ("113039", "cancelled"), ("113038", "entered-in-error")]
)
def test_a_study_whose_every_instance_was_rejected_gets_the_code_s_status(code: str, status: str) -> None:
    synthetic = SyntheticStudy(series=2, per_series=1)
    events = synthetic.events()
    study = Study()
    study.apply(*events)
    study.publish()
    study.apply(rejection(synthetic, code, *events))
    assert study.ready().fhir_status == status


def test_a_rejected_instance_sent_again_with_other_content_stays_rejected() -> None:
    synthetic = SyntheticStudy(series=1, per_series=2)
    events = synthetic.events()
    study = Study()
    study.apply(*events, rejection(synthetic, "113001", events[0]))
    study.apply(replace(events[0], sha256="a" * 64, instance_title="other"))
    assert study.ready().number_of_instances == 1


def test_a_ready_record_with_a_status_fhir_does_not_know_is_refused() -> None:
    study = Study()
    study.apply(*SyntheticStudy(series=1, per_series=1).events())
    raw = msgspec.json.decode(encode_study_ready(study.ready()))
    raw["fhir_status"] = "deleted"
    with pytest.raises(InvalidRecordError):
        decode_study_ready(msgspec.json.encode(raw))


def test_the_identity_of_a_note_is_its_own() -> None:
    images = synth.generate_studies(studies=1, series=1, instances=1)
    note = synth.rejection_note(images)
    identity = check_identity(note, note.SOPClassUID, note.SOPInstanceUID)
    assert identity == InstanceIdentity(
        note.StudyInstanceUID, note.SeriesInstanceUID, note.SOPInstanceUID, KEY_OBJECT_SELECTION
    )
