"""The fixed material synthetic studies are made of: patients (some with non-ASCII names in their proper
DICOM character sets), institutions with their identifier issuers, and modalities with their image
geometry. All of it is invented; no real person is described.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    MRImageStorage,
    UltrasoundImageStorage,
)


@dataclass(frozen=True, slots=True)
class Patient:
    """A made-up patient. ``name`` is a DICOM PN value, possibly with ideographic and phonetic groups
    (``alphabetic=ideographic=phonetic``); ``charset`` is the SpecificCharacterSet it needs."""

    name: str
    charset: tuple[str, ...]
    sex: str


@dataclass(frozen=True, slots=True)
class Institution:
    name: str
    station: str
    patient_id_issuer: str
    accession_issuer: str
    accession_issuer_oid: str
    referring_physician: str


@dataclass(frozen=True, slots=True)
class Modality:
    code: str
    sop_class_uid: str
    study_descriptions: tuple[str, ...]
    series_descriptions: tuple[str, ...]
    body_parts: tuple[str, ...]
    manufacturer: str
    model: str
    photometric: str = "MONOCHROME2"
    bits_stored: int = 12
    signed: bool = False
    cross_sectional: bool = False


PATIENTS: tuple[Patient, ...] = (
    Patient("Smith^John^A", (), "M"),
    Patient("Müller^Jürgen", ("ISO_IR 100",), "M"),
    Patient("Yamada^Tarou=山田^太郎=やまだ^たろう", ("", "ISO 2022 IR 87"), "M"),
    Patient("Johnson^Mary^E", (), "F"),
    Patient("Lefèvre^Hélène", ("ISO_IR 100",), "F"),
    Patient("Wang^XiaoDong=王^小东=", ("GB18030",), "M"),
    Patient("Papadopoulou^Eleni=Παπαδοπούλου^Ελένη=", ("ISO_IR 192",), "F"),
    Patient("Garcia^Carlos", (), "M"),
    Patient("Hong^Gildong=洪^吉洞=홍^길동", ("ISO_IR 192",), "M"),
    Patient("Øster^Åse", ("ISO_IR 100",), "F"),
    Patient("Suzuki^Hanako=鈴木^花子=すずき^はなこ", ("", "ISO 2022 IR 87"), "F"),
    Patient("Brown^Oliver", (), "O"),
)

INSTITUTIONS: tuple[Institution, ...] = (
    Institution(
        "Northgate General Hospital", "NGH-CT01", "NGH", "NGH_RIS", "2.16.840.1.113883.3.9999.1.1", "Adams^Grace^^Dr"
    ),
    Institution(
        "Riverside Imaging Center", "RIC-MR02", "RIC", "RIC_RIS", "2.16.840.1.113883.3.9999.2.1", "Baker^Henry^^Dr"
    ),
    Institution("St. Lucas Clinic", "SLC-XR03", "SLC", "SLC_RIS", "2.16.840.1.113883.3.9999.3.1", "Clarke^Ines^^Dr"),
)

MODALITIES: dict[str, Modality] = {
    "CT": Modality(
        "CT",
        CTImageStorage,
        ("CT CHEST WITH CONTRAST", "CT HEAD WITHOUT CONTRAST", "CT ABDOMEN PELVIS"),
        ("AXIAL 1.25MM", "AXIAL 5MM", "CORONAL MPR", "SCOUT"),
        ("CHEST", "HEAD", "ABDOMEN"),
        "ACME Medical",
        "Volumetrix 64",
        signed=True,
        cross_sectional=True,
    ),
    "MR": Modality(
        "MR",
        MRImageStorage,
        ("MRI BRAIN WITHOUT CONTRAST", "MRI KNEE LEFT", "MRI LUMBAR SPINE"),
        ("T1 SAG", "T2 AX", "FLAIR AX", "DWI"),
        ("BRAIN", "KNEE", "LSPINE"),
        "ACME Medical",
        "Magnetron 3T",
        cross_sectional=True,
    ),
    "CR": Modality(
        "CR",
        ComputedRadiographyImageStorage,
        ("XR CHEST 2 VIEWS", "XR HAND LEFT"),
        ("PA", "LATERAL"),
        ("CHEST", "HAND"),
        "ACME Imaging",
        "PlateReader 5",
    ),
    "DX": Modality(
        "DX",
        DigitalXRayImageStorageForPresentation,
        ("XR KNEE RIGHT", "XR PELVIS"),
        ("AP", "LATERAL"),
        ("KNEE", "PELVIS"),
        "ACME Imaging",
        "FlatPanel 9",
    ),
    "US": Modality(
        "US",
        UltrasoundImageStorage,
        ("US ABDOMEN COMPLETE", "US THYROID"),
        ("B-MODE",),
        ("ABDOMEN", "NECK"),
        "ACME Sound",
        "Echo 7",
        bits_stored=8,
    ),
}

SIZES: dict[str, tuple[int, int]] = {"small": (64, 64), "ct": (512, 512), "mr": (256, 256)}
"""Image rows and columns per ``size``; ``ct`` and ``mr`` also fix the modality."""

SIZE_MODALITY: dict[str, str] = {"ct": "CT", "mr": "MR"}
