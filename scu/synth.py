"""Synthetic DICOM studies for demos, tests and benchmarks (``studystream synth``).

Public API (also used by the receiver, aggregator and end-to-end tests)::

    from scu import synth

    paths = synth.write_studies(tmp_path, studies=2, series=3, instances=10, size="small", seed=7)
    datasets = synth.generate_studies(studies=1, series=1, instances=5, modality="MR")   # nothing written
    path = synth.write_dataset(datasets[0], tmp_path, transfer_syntax=ImplicitVRLittleEndian)

- ``generate_studies(...) -> list[FileDataset]``: complete instances with File Meta Information, in study,
  series, instance order. ``iter_studies(...)`` yields the same lazily.
- ``write_studies(out_dir, ...) -> list[Path]``: writes them as ``out_dir/<StudyUID>/<SeriesUID>/<SOPUID>.dcm``.
- ``write_dataset(ds, out_dir, transfer_syntax=None) -> Path``: writes one, optionally in another
  uncompressed transfer syntax (Implicit/Explicit VR Little Endian, Deflated).
- ``rejection_note(images, code="113001") -> FileDataset``: an IHE IOCM rejection note (Key Object
  Selection document titled with a DCM rejection code) naming ``images`` of one study.

Arguments: ``studies``, ``series`` (per study), ``instances`` (per series); ``size`` is ``small`` (64×64,
modalities rotate through CT, MR, CR, DX, US), ``ct`` (512×512 CT, ~0.5 MB) or ``mr`` (256×256 MR);
``modality`` forces one modality; ``seed`` makes everything (UIDs included) reproducible, ``None`` gives
fresh UIDs on every call (what tests want to stay independent of each other).

Every study has a patient with PatientID and IssuerOfPatientID, an AccessionNumber with
IssuerOfAccessionNumberSequence, study/series dates, descriptions, numbers and body parts, and image
pixel data. Patients rotate through a catalogue in which several names are non-ASCII, each with the
SpecificCharacterSet it needs: ISO_IR 100 (Latin-1), ISO_IR 192 (UTF-8), ISO 2022 IR 87 (Japanese, with
ideographic and phonetic component groups) and GB18030 (Chinese).
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from domain.rejection import KEY_OBJECT_SELECTION, REJECTION_CODES
from scu.synth_catalog import INSTITUTIONS, MODALITIES, PATIENTS, SIZE_MODALITY, SIZES, Modality, Patient

WRITABLE_TRANSFER_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)
_SMALL_ROTATION = ("CT", "MR", "CR", "DX", "US")
_EPOCH = dt.date(2025, 6, 30)


def iter_studies(
    studies: int = 1,
    series: int = 1,
    instances: int = 1,
    size: str = "small",
    seed: int | None = None,
    modality: str | None = None,
) -> Iterator[FileDataset]:
    """Yield every instance of the synthetic studies, in study, series, instance order."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, not {size!r}")
    if modality is not None and modality not in MODALITIES:
        raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, not {modality!r}")
    if min(studies, series, instances) < 1:
        raise ValueError("studies, series and instances must each be at least 1")
    run_seed = seed if seed is not None else random.SystemRandom().randrange(2**62)
    rng = random.Random(run_seed)  # noqa: S311 - reproducible test data, not security
    for study_index in range(studies):
        code = modality or SIZE_MODALITY.get(size) or _SMALL_ROTATION[(run_seed + study_index) % len(_SMALL_ROTATION)]
        patient = PATIENTS[(run_seed + study_index) % len(PATIENTS)]
        study = _study_header(rng, run_seed, study_index, patient, MODALITIES[code])
        for series_index in range(series):
            series_header = _series_header(rng, run_seed, study_index, series_index, MODALITIES[code])
            base_image = _base_image(rng, SIZES[size], MODALITIES[code])
            for instance_index in range(instances):
                position = (study_index, series_index, instance_index)
                yield _instance(study, series_header, base_image, MODALITIES[code], run_seed, position)


def generate_studies(
    studies: int = 1,
    series: int = 1,
    instances: int = 1,
    size: str = "small",
    seed: int | None = None,
    modality: str | None = None,
) -> list[FileDataset]:
    """Every instance of the synthetic studies as pydicom datasets (nothing is written)."""
    return list(iter_studies(studies, series, instances, size, seed, modality))


def write_dataset(ds: FileDataset, out_dir: Path, transfer_syntax: str | None = None) -> Path:
    """Write ``ds`` in the DICOM File Format under ``out_dir``; returns the file's path."""
    if transfer_syntax is not None:
        if transfer_syntax not in WRITABLE_TRANSFER_SYNTAXES:
            raise ValueError(f"synthetic data is written uncompressed; {transfer_syntax} is not supported")
        ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    path = Path(out_dir) / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    syntax = ds.file_meta.TransferSyntaxUID
    ds.save_as(path, implicit_vr=syntax.is_implicit_VR, little_endian=syntax.is_little_endian, enforce_file_format=True)
    return path


def write_studies(
    out_dir: Path,
    studies: int = 1,
    series: int = 1,
    instances: int = 1,
    size: str = "small",
    seed: int | None = None,
    modality: str | None = None,
) -> list[Path]:
    """Write the synthetic studies under ``out_dir``; returns the files' paths in study order."""
    return [write_dataset(ds, Path(out_dir)) for ds in iter_studies(studies, series, instances, size, seed, modality)]


def _uid(run_seed: int, *parts: object) -> UID:
    # Hashing the seed with the position makes UIDs reproducible for a seed and unique across seeds.
    return generate_uid(entropy_srcs=[str(run_seed), *(str(part) for part in parts)])


def _study_header(rng: random.Random, run_seed: int, index: int, patient: Patient, modality: Modality) -> Dataset:
    institution = rng.choice(INSTITUTIONS)
    study_date = _EPOCH - dt.timedelta(days=rng.randrange(3 * 365))
    birth_date = study_date - dt.timedelta(days=rng.randrange(18 * 365, 90 * 365))
    ds = Dataset()
    if patient.charset:
        ds.SpecificCharacterSet = list(patient.charset) if len(patient.charset) > 1 else patient.charset[0]
    ds.PatientName = patient.name
    ds.PatientID = f"{institution.patient_id_issuer}{rng.randrange(10**7, 10**8)}"
    ds.IssuerOfPatientID = institution.patient_id_issuer
    ds.PatientBirthDate = birth_date.strftime("%Y%m%d")
    ds.PatientSex = patient.sex
    ds.StudyInstanceUID = _uid(run_seed, "study", index)
    ds.StudyDate = study_date.strftime("%Y%m%d")
    ds.StudyTime = f"{rng.randrange(7, 19):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}"
    ds.StudyID = str(rng.randrange(1, 10**6))
    ds.AccessionNumber = f"A{study_date:%y}{rng.randrange(10**8, 10**9)}"
    issuer = Dataset()
    issuer.LocalNamespaceEntityID = institution.accession_issuer
    issuer.UniversalEntityID = institution.accession_issuer_oid
    issuer.UniversalEntityIDType = "ISO"
    ds.IssuerOfAccessionNumberSequence = [issuer]
    ds.StudyDescription = rng.choice(modality.study_descriptions)
    ds.ReferringPhysicianName = institution.referring_physician
    ds.InstitutionName = institution.name
    ds.StationName = institution.station
    ds.Manufacturer = modality.manufacturer
    ds.ManufacturerModelName = modality.model
    return ds


def _series_header(rng: random.Random, run_seed: int, study_index: int, index: int, modality: Modality) -> Dataset:
    ds = Dataset()
    ds.Modality = modality.code
    ds.SeriesInstanceUID = _uid(run_seed, "series", study_index, index)
    ds.SeriesNumber = index + 1
    ds.SeriesDescription = modality.series_descriptions[index % len(modality.series_descriptions)]
    ds.BodyPartExamined = rng.choice(modality.body_parts)
    ds.FrameOfReferenceUID = _uid(run_seed, "frame", study_index)
    return ds


def _base_image(rng: random.Random, shape: tuple[int, int], modality: Modality) -> np.ndarray:
    # A smooth pattern plus noise: cheap to make, not trivially compressible, different per series.
    noise = np.random.default_rng(rng.randrange(2**32))
    rows, cols = shape
    y, x = np.mgrid[0:rows, 0:cols]
    pattern = (np.sin(x / (cols / 6)) + np.cos(y / (rows / 5)) + 2) * (2 ** (modality.bits_stored - 3))
    image = pattern + noise.integers(0, 2 ** (modality.bits_stored - 4), size=shape)
    dtype = np.uint8 if modality.bits_stored <= 8 else np.uint16
    return image.astype(dtype)


def _instance(
    study: Dataset,
    series: Dataset,
    base_image: np.ndarray,
    modality: Modality,
    run_seed: int,
    position: tuple[int, int, int],
) -> FileDataset:
    study_index, series_index, index = position
    sop_instance_uid = _uid(run_seed, "instance", study_index, series_index, index)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(modality.sop_class_uid)
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "STUDYSTREAM_SYN"
    ds = FileDataset("", Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.update(study)
    ds.update(series)
    ds.SOPClassUID = modality.sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"] if modality.cross_sectional else ["ORIGINAL", "PRIMARY"]
    ds.InstanceNumber = index + 1
    ds.SeriesDate = ds.ContentDate = study.StudyDate
    ds.SeriesTime = ds.ContentTime = study.StudyTime
    ds.PatientOrientation = "" if modality.cross_sectional else ["L", "F"]
    if modality.cross_sectional:
        ds.SliceThickness = "1.25"
        ds.ImagePositionPatient = ["-250.0", "-250.0", f"{-index * 1.25:.2f}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.SliceLocation = f"{-index * 1.25:.2f}"
    if modality.code == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.update(_pixel_module(base_image, modality, index))
    return ds


def _pixel_module(base_image: np.ndarray, modality: Modality, index: int) -> Dataset:
    rows, cols = base_image.shape
    image = np.roll(base_image, index, axis=1)
    ds = Dataset()
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = modality.photometric
    ds.Rows = rows
    ds.Columns = cols
    ds.PixelSpacing = ["0.5", "0.5"]
    ds.BitsAllocated = 8 if image.dtype == np.uint8 else 16
    ds.BitsStored = modality.bits_stored
    ds.HighBit = modality.bits_stored - 1
    ds.PixelRepresentation = 1 if modality.signed else 0
    if modality.code == "CT":
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
    pixels = image.astype(np.int16) if modality.signed else image
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OB" if ds.BitsAllocated == 8 else "OW"
    return ds


_STUDY_ATTRIBUTES = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


def _code(value: str, meaning: str, scheme: str = "DCM") -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _evidence(images: Sequence[Dataset]) -> list[Dataset]:
    by_series: dict[str, list[Dataset]] = {}
    for image in images:
        by_series.setdefault(image.SeriesInstanceUID, []).append(image)
    series_items = []
    for series_uid, members in by_series.items():
        series_item = Dataset()
        series_item.SeriesInstanceUID = series_uid
        series_item.ReferencedSOPSequence = [_sop_reference(image) for image in members]
        series_items.append(series_item)
    study_item = Dataset()
    study_item.StudyInstanceUID = images[0].StudyInstanceUID
    study_item.ReferencedSeriesSequence = series_items
    return [study_item]


def _sop_reference(image: Dataset) -> Dataset:
    reference = Dataset()
    reference.ReferencedSOPClassUID = image.SOPClassUID
    reference.ReferencedSOPInstanceUID = image.SOPInstanceUID
    return reference


def rejection_note(images: Sequence[Dataset], code: str = "113001") -> FileDataset:
    """A Key Object Selection document titled with ``code`` naming ``images`` (all of one study), in its
    own series of that study, as a PACS's "reject" action sends it (IHE RAD TF-3 IOCM)."""
    if not images or len({image.StudyInstanceUID for image in images}) != 1:
        raise ValueError("a rejection note names instances of one study")
    sop_instance_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(KEY_OBJECT_SELECTION)
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "STUDYSTREAM_SYN"
    ds = FileDataset("", Dataset(), file_meta=meta, preamble=b"\0" * 128)
    for keyword in _STUDY_ATTRIBUTES:
        if keyword in images[0]:
            setattr(ds, keyword, images[0].data_element(keyword).value)
    ds.SOPClassUID, ds.SOPInstanceUID = KEY_OBJECT_SELECTION, sop_instance_uid
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = "KO", generate_uid(), 999, 1
    ds.ContentDate, ds.ContentTime = dt.date.today().strftime("%Y%m%d"), "120000"
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = [_code(code, REJECTION_CODES.get(code, "Rejected"))]
    template = Dataset()
    template.MappingResource, template.TemplateIdentifier = "DCMR", "2010"
    ds.ContentTemplateSequence = [template]
    ds.CurrentRequestedProcedureEvidenceSequence = _evidence(images)
    content = []
    for image in images:
        item = Dataset()
        item.RelationshipType, item.ValueType = "CONTAINS", "IMAGE"
        item.ReferencedSOPSequence = [_sop_reference(image)]
        content.append(item)
    ds.ContentSequence = content
    return ds
