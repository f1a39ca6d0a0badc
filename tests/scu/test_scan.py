"""Scanning, grouping by study and planning presentation contexts: no network."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
)

from scu import synth
from scu.scan import InstanceFile, StudyBatch, context_keys, group_by_study, plan_associations, scan
from scu.sender import SendPolicy


def _mixed_study(tmp_path: Path) -> list[Path]:
    """One study: CT in two transfer syntaxes plus MR, written under odd file names and folders."""
    ct = synth.generate_studies(series=2, instances=2, modality="CT")
    mr = synth.generate_studies(series=1, instances=2, modality="MR")
    for ds in mr:
        ds.StudyInstanceUID = ct[0].StudyInstanceUID
    syntaxes = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian]
    paths = [synth.write_dataset(ds, tmp_path / "a", ts) for ds, ts in zip(ct, syntaxes, strict=True)]
    paths += [synth.write_dataset(ds, tmp_path / "b" / "deeper") for ds in mr]
    renamed = paths[0].with_name("IMG0001")  # no extension: names never matter
    paths[0].rename(renamed)
    return [renamed, *paths[1:]]


def test_one_context_per_sop_class_and_transfer_syntax_in_a_mixed_study(tmp_path: Path) -> None:
    _mixed_study(tmp_path)
    result = scan([tmp_path])
    studies = group_by_study(result.instances)
    assert len(studies) == 1 and len(studies[0].instances) == 6
    assert set(context_keys(studies[0].instances)) == {
        (CTImageStorage, ExplicitVRLittleEndian),
        (CTImageStorage, ImplicitVRLittleEndian),
        (CTImageStorage, DeflatedExplicitVRLittleEndian),
        (MRImageStorage, ExplicitVRLittleEndian),
    }
    plans = plan_associations(studies[0])
    assert len(plans) == 1
    assert len(plans[0].contexts) == 4
    assert sorted(str(i.path) for i in plans[0].instances) == sorted(str(i.path) for i in studies[0].instances)


def test_instances_are_grouped_by_study_in_first_seen_order(tmp_path: Path) -> None:
    paths = synth.write_studies(tmp_path, studies=3, series=2, instances=2, seed=11)
    studies = group_by_study(scan([tmp_path]).instances)
    assert len(studies) == 3
    assert all(len(study.instances) == 4 for study in studies)
    assert {s.study_uid for s in studies} == {p.parent.parent.name for p in paths}
    for study in studies:
        assert {i.study_uid for i in study.instances} == {study.study_uid}


def test_non_dicom_files_are_skipped_and_counted_with_a_reason(tmp_path: Path) -> None:
    synth.write_studies(tmp_path, studies=1, instances=2)
    (tmp_path / "README.txt").write_text("not an image")
    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "noise.dcm").write_bytes(bytes(range(256)) * 8)
    bare = synth.generate_studies()[0]
    # Without preamble and File Meta it is still a data set, but one that cannot be sent as it is on disk.
    bare.preamble = None
    bare.file_meta = FileMetaDataset()
    bare.save_as(tmp_path / "no-meta.dcm", enforce_file_format=False, implicit_vr=False, little_endian=True)
    result = scan([tmp_path])
    assert len(result.instances) == 2
    reasons = {s.path.name: s.reason for s in result.skipped}
    assert set(reasons) == {"README.txt", "empty.dcm", "noise.dcm", "no-meta.dcm"}
    assert reasons["README.txt"].startswith("not a DICOM file")


def _fake(index: int, study: str = "1.2.3") -> InstanceFile:
    sop_class = f"1.2.840.10008.5.1.4.1.1.{index % 300}"
    return InstanceFile(Path(f"/x/{index}"), study, sop_class, f"9.{index}", ExplicitVRLittleEndian, 10)


def test_a_study_needing_more_than_128_contexts_is_split_across_associations() -> None:
    study = StudyBatch("1.2.3", tuple(_fake(i) for i in range(600)))
    plans = plan_associations(study)
    assert [len(plan.contexts) for plan in plans] == [128, 128, 44]
    sent = [instance for plan in plans for instance in plan.instances]
    assert sorted(i.sop_instance_uid for i in sent) == sorted(i.sop_instance_uid for i in study.instances)
    for plan in plans:
        assert {i.context_key for i in plan.instances} == set(plan.contexts)


def test_storage_commitment_leaves_room_for_its_own_context() -> None:
    study = StudyBatch("1.2.3", tuple(_fake(i) for i in range(300)))
    policy = SendPolicy(storage_commitment=True)
    assert [len(p.contexts) for p in plan_associations(study, policy.contexts_per_association)] == [127, 127, 46]


def test_context_limit_outside_the_dicom_range_is_refused() -> None:
    with pytest.raises(ValueError, match="max_contexts"):
        plan_associations(StudyBatch("1", (_fake(1),)), 129)


def test_fast_header_reader_agrees_with_pydicom(tmp_path: Path) -> None:
    from scu.header import read_header
    from scu.scan import _read_with_pydicom, read_instance

    datasets = synth.generate_studies(series=1, instances=4, modality="MR")
    datasets[3].ReferencedStudySequence = [datasets[0].IssuerOfAccessionNumberSequence[0]]
    syntaxes = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian]
    paths = [synth.write_dataset(ds, tmp_path, ts) for ds, ts in zip(datasets, syntaxes, strict=True)]
    assert read_header(paths[0]) is not None and read_header(paths[1]) is not None
    assert read_header(paths[2]) is None  # deflated: pydicom decides
    for path in paths:
        assert read_instance(path) == _read_with_pydicom(path)
