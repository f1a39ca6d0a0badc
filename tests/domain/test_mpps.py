"""Modality Performed Procedure Step, the pure half: N-CREATE / N-SET state machine, reading hostile datasets,
and the study rule a performed_procedure_step record drives (no I/O)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import config
from pydicom.dataset import Dataset

from domain import mpps
from domain import study as rules
from domain.batch import BatchState, apply_event, apply_performed_step
from domain.completeness import CompletedBy, Completeness, Signal
from domain.events import PerformedProcedureStep, decode_raw_record, encode_performed_procedure_step
from tests.domain.test_study import MemoryTables
from tests.factories import make_event

STUDY = "1.2.826.0.1.3680043.10.1404.88"
NOW = "2024-05-01T10:00:00.000Z"


def create_dataset(study_uid: str = STUDY, **changes: Any) -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    item = Dataset()
    item.StudyInstanceUID = study_uid
    ds.ScheduledStepAttributesSequence = [item]
    ds.PerformedProcedureStepID, ds.PerformedStationAETitle, ds.Modality = "PPS1", "CT1", "CT"
    ds.PerformedProcedureStepStartDate, ds.PerformedProcedureStepStartTime = "20240501", "100000"
    ds.PatientName = "Doe^Jane"
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def completed_dataset(*sops: str, status: str = "COMPLETED") -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    series = Dataset()
    series.SeriesInstanceUID = f"{STUDY}.1"
    images = []
    for sop in sops[:-1]:
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", sop
        images.append(ref)
    series.ReferencedImageSequence = images
    other = Dataset()
    other.ReferencedSOPClassUID, other.ReferencedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.88.22", sops[-1]
    series.ReferencedNonImageCompositeSOPInstanceSequence = [other]
    ds.PerformedSeriesSequence = [series]
    return ds


def discontinued_dataset(code: str = "110514", meaning: str = "Incorrect worklist entry selected") -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = "DISCONTINUED"
    reason = Dataset()
    reason.CodeValue, reason.CodingSchemeDesignator, reason.CodeMeaning = code, "DCM", meaning
    ds.PerformedProcedureStepDiscontinuationReasonCodeSequence = [reason]
    return ds


def change(ds: Dataset, max_instances: int = 100) -> mpps.MppsChange:
    read = mpps.read_change(ds, max_instances)
    assert isinstance(read, mpps.MppsChange), read
    return read


def created(uid: str = "2.25.1") -> mpps.MppsStep:
    outcome = mpps.create(None, uid, change(create_dataset()), "MOD", NOW)
    assert outcome.status == mpps.SUCCESS and outcome.step is not None
    return outcome.step


# --- N-CREATE ------------------------------------------------------------------------------------


def test_n_create_makes_a_step_in_progress_without_patient_data() -> None:
    step = created()
    assert (step.uid, step.status, step.study_uid, step.calling_ae) == ("2.25.1", "IN PROGRESS", STUDY, "MOD")
    assert b"Doe" not in mpps.encode_step(step)
    assert mpps.decode_step(mpps.encode_step(step)) == step


def test_n_create_of_an_existing_step_is_a_duplicate() -> None:
    outcome = mpps.create(created(), "2.25.1", change(create_dataset()), "MOD", NOW)
    assert (outcome.status, outcome.step) == (mpps.DUPLICATE_SOP_INSTANCE, None)


def test_n_create_refuses_missing_and_invalid_attributes() -> None:
    def status(ds: Dataset) -> int:
        read = mpps.read_change(ds, 100)
        return read.status if isinstance(read, mpps.Refusal) else mpps.create(None, "2.25.1", read, "M", NOW).status

    assert status(create_dataset(PerformedProcedureStepStatus=None)) == mpps.MISSING_ATTRIBUTE
    assert status(create_dataset(PerformedProcedureStepStatus="COMPLETED")) == mpps.INVALID_ATTRIBUTE_VALUE
    assert status(create_dataset(ScheduledStepAttributesSequence=None)) == mpps.MISSING_ATTRIBUTE
    assert status(create_dataset(ScheduledStepAttributesSequence=[])) == mpps.MISSING_ATTRIBUTE
    assert status(create_dataset(study_uid="1.2.x")) == mpps.INVALID_ATTRIBUTE_VALUE
    assert status(create_dataset(Modality=None)) == mpps.MISSING_ATTRIBUTE
    assert status(create_dataset(PerformedProcedureStepID="")) == mpps.MISSING_ATTRIBUTE_VALUE
    assert status(create_dataset(PerformedProcedureStepStatus="in progress")) == mpps.SUCCESS  # CS, any case


# --- N-SET ---------------------------------------------------------------------------------------


def test_n_set_completed_names_each_instance_once_and_ends_the_step() -> None:
    sops = (f"{STUDY}.1.1", f"{STUDY}.1.2", f"{STUDY}.1.3")
    named = change(completed_dataset(sops[0], *sops))  # the first one twice
    outcome = mpps.update(created(), named, NOW)
    assert outcome.status == mpps.SUCCESS and outcome.final and outcome.step is not None
    assert outcome.step.sop_instance_uids == sops
    record = mpps.step_record(outcome.step, NOW)
    assert (record.study_uid, record.mpps_uid, record.status, record.sop_instance_uids) == (
        STUDY,
        "2.25.1",
        "COMPLETED",
        sops,
    )
    assert decode_raw_record(encode_performed_procedure_step(record)) == record


def test_n_set_in_progress_keeps_the_series_for_the_final_n_set() -> None:
    series = change(completed_dataset(f"{STUDY}.1.1", f"{STUDY}.1.2", status="IN PROGRESS"))
    step = mpps.update(created(), series, NOW).step
    assert step is not None and step.status == "IN PROGRESS"
    status_only = Dataset()
    status_only.PerformedProcedureStepStatus = "COMPLETED"
    outcome = mpps.update(step, change(status_only), NOW)
    assert outcome.final and outcome.step is not None and len(outcome.step.sop_instance_uids) == 2


def test_n_set_of_a_finished_step_is_refused_as_no_longer_updatable() -> None:
    done = mpps.update(created(), change(completed_dataset(f"{STUDY}.1.1", f"{STUDY}.1.2")), NOW).step
    assert done is not None
    again = mpps.update(done, change(discontinued_dataset()), NOW)
    assert again.status == mpps.PROCESSING_FAILURE and again.step is None
    assert again.refusal == mpps.Refusal(0x0110, mpps.NO_LONGER_UPDATABLE, 0xA710)


def test_n_set_refusals() -> None:
    assert mpps.update(None, change(discontinued_dataset()), NOW).status == mpps.NO_SUCH_OBJECT_INSTANCE
    bogus = Dataset()
    bogus.PerformedProcedureStepStatus = "FINISHED"
    assert mpps.update(created(), change(bogus), NOW).status == mpps.INVALID_ATTRIBUTE_VALUE
    no_series = Dataset()
    no_series.PerformedProcedureStepStatus = "COMPLETED"
    assert mpps.update(created(), change(no_series), NOW).status == mpps.MISSING_ATTRIBUTE


def test_discontinued_keeps_code_and_meaning_only() -> None:
    outcome = mpps.update(created(), change(discontinued_dataset()), NOW)
    assert outcome.final and outcome.step is not None
    record = mpps.step_record(outcome.step, NOW)
    assert (record.status, record.reason_code, record.reason_meaning) == (
        "DISCONTINUED",
        "110514",
        "Incorrect worklist entry selected",
    )


def test_a_step_naming_more_instances_than_kept_is_truncated() -> None:
    sops = [f"{STUDY}.1.{n}" for n in range(1, 6)]
    read = change(completed_dataset(*sops), max_instances=3)
    assert read.truncated and read.sop_instance_uids == tuple(sops[:3])


# --- Hostile datasets (the trust boundary) --------------------------------------------------------

_VALUES = st.one_of(
    st.none(),
    st.text(max_size=80),
    st.sampled_from(["", "1.2.3", "COMPLETED", "DISCONTINUED", "IN PROGRESS", "1..2", "9" * 70, "\x1b$B", "x\\y"]),
    st.integers(-(2**31), 2**31 - 1),
    st.binary(max_size=20),
)
_KEYWORDS = st.sampled_from(
    [
        "PerformedProcedureStepStatus",
        "StudyInstanceUID",
        "ReferencedSOPInstanceUID",
        "CodeValue",
        "CodeMeaning",
        "Modality",
        "PerformedProcedureStepID",
    ]
)
_SEQUENCES = [
    "ScheduledStepAttributesSequence",
    "PerformedSeriesSequence",
    "ReferencedImageSequence",
    "ReferencedNonImageCompositeSOPInstanceSequence",
    "PerformedProcedureStepDiscontinuationReasonCodeSequence",
]


def _set(ds: Dataset, keyword: str, value: Any) -> None:
    with config.disable_value_validation():  # hostile values are the point; no warning per value either
        try:
            setattr(ds, keyword, value)
        except Exception:  # pydicom refuses some values at assignment: then the dataset lacks them
            pass


@st.composite
def hostile(draw: st.DrawFn, depth: int = 0) -> Dataset:
    ds = Dataset()
    for _ in range(draw(st.integers(0, 5))):
        _set(ds, draw(_KEYWORDS), draw(_VALUES))
    if depth < 2:
        for keyword in draw(st.lists(st.sampled_from(_SEQUENCES), max_size=3)):
            _set(ds, keyword, draw(st.lists(hostile(depth + 1), max_size=3)))
    return ds


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile(), hostile(), st.integers(1, 5))
def test_a_hostile_dataset_is_a_refusal_or_a_step_whose_record_decodes(
    first: Dataset, second: Dataset, max_instances: int
) -> None:
    read = mpps.read_change(first, max_instances)
    if isinstance(read, mpps.Refusal):
        assert read.status in (mpps.INVALID_ATTRIBUTE_VALUE,) and len(read.comment) <= 64
        return
    step = created()
    then = mpps.read_change(second, max_instances)
    if isinstance(then, mpps.Refusal):
        return
    for change_ in (read, then):
        outcome = mpps.update(step, change_, NOW)
        if outcome.step is None:
            assert outcome.status != mpps.SUCCESS
            continue
        step = outcome.step
        assert len(step.sop_instance_uids) <= max_instances
        if outcome.final:
            record = mpps.step_record(step, NOW)
            assert decode_raw_record(encode_performed_procedure_step(record)) == record
            break


# --- The study rule ------------------------------------------------------------------------------


def _study_with(*numbers: int) -> BatchState:
    batch = BatchState(MemoryTables())
    for offset, number in enumerate(numbers):
        at = rules.Arrival(1000.0 + offset, 1000.0 + offset, 0, offset)
        apply_event(batch, make_event(STUDY, f"{STUDY}.1", number), at, max_instances=100)
    return batch


def _record(*numbers: int, **fields: Any) -> PerformedProcedureStep:
    sops = tuple(make_event(STUDY, f"{STUDY}.1", n).sop_instance_uid for n in numbers)
    return PerformedProcedureStep(STUDY, "2.25.7", fields.pop("status", "COMPLETED"), sops, **fields)


def test_a_completed_step_completes_the_study_once_its_last_named_instance_is_in() -> None:
    batch = _study_with(1, 2)
    outcome = apply_performed_step(batch, _record(1, 2, 3), 0, 10, hold_until=5000.0)
    assert (outcome.known_study, outcome.missing, outcome.changed) == (True, 1, True)
    header = batch.header(STUDY, 0)
    assert header is not None and not header.mpps_completed and len(header.mpps_waiting) == 1
    long_quiet = Completeness(quiet_period=30.0)
    # Quiet for long, but the step's instance is awaited until the hold ends; then the quiet period decides.
    assert rules.ready_signal(header, 4000.0, 4000.0, long_quiet) is None
    assert rules.ready_signal(header, 5000.0, 5000.0, long_quiet) is CompletedBy.QUIET_PERIOD
    apply_event(batch, make_event(STUDY, f"{STUDY}.1", 3), rules.Arrival(1003.0, 1003.0, 0, 11), max_instances=100)
    header = batch.header(STUDY, 0)
    assert header is not None and header.mpps_completed and header.mpps_waiting == ()
    assert rules.ready_signal(header, 1003.5, 1003.5, long_quiet) is CompletedBy.MPPS
    assert rules.needs_check(header, 1003.5, 30.0)
    untrusted = Completeness(quiet_period=30.0, trusted_signals=frozenset({Signal.COMMITMENT}))
    assert rules.ready_signal(header, 1003.5, 1003.5, untrusted) is None


def test_a_discontinued_or_truncated_step_completes_nothing_and_a_replay_changes_nothing() -> None:
    batch = _study_with(1)
    apply_performed_step(batch, _record(status="DISCONTINUED", reason_code="110514", reason_meaning="Wrong"), 0, 5, 0)
    header = batch.header(STUDY, 0)
    assert header is not None and (header.mpps_status, header.mpps_reason_code) == ("DISCONTINUED", "110514")
    assert not header.mpps_completed and rules.ready_signal(header, 1001.0, 1001.0, Completeness(30.0)) is None
    assert not apply_performed_step(batch, _record(1), 0, 5, 0).changed  # offset already applied
    apply_performed_step(batch, _record(1, truncated=True), 0, 6, 0)
    header = batch.header(STUDY, 0)
    assert header is not None and not header.mpps_completed and header.mpps_status == "COMPLETED"
    assert not apply_performed_step(BatchState(MemoryTables()), _record(1), 0, 1, 0).known_study
