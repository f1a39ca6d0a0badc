"""What each DICOM attribute becomes in FHIR: the table ``docs/mapping.md`` is rendered from.

One row per attribute (or sequence item path, ``A>B``) that :mod:`domain.dicom_event` and its reader
(:mod:`domain.dicom_reader`) read; a test fails when the event builder reads a keyword this table does
not list, and when ``docs/mapping.md`` differs from :func:`render` (``python -m app.mapping_doc --write
docs/mapping.md`` regenerates it).
"""

from __future__ import annotations

from dataclasses import dataclass

from domain.fhir_resources import MAPPING_VERSION


@dataclass(frozen=True, slots=True)
class MappingRow:
    dicom: str  # keyword, or an item path ``Sequence>Keyword``; several separated by ", "
    fhir: str  # the element it becomes, or "—" when it only steers the pipeline
    rule: str


MAPPING_TABLE: tuple[MappingRow, ...] = (
    # --- Patient ---
    MappingRow(
        "PatientID",
        "Patient.identifier.value",
        "The identity of the study's patient, with the system below. No PatientID: a patient of the study "
        "alone (system `urn:studystream:patient-of-study`, value the study UID), so anonymous studies never merge.",
    ),
    MappingRow(
        "IssuerOfPatientIDQualifiersSequence>UniversalEntityID, "
        "IssuerOfPatientIDQualifiersSequence>UniversalEntityIDType",
        "Patient.identifier.system",
        "First choice: ISO → `urn:oid:<id>`, UUID → `urn:uuid:<id>`, URI as it is; other types (DNS, X400, ...) "
        "and ids not matching their type are skipped.",
    ),
    MappingRow(
        "IssuerOfPatientID",
        "Patient.identifier.system",
        "Second choice: an OID → `urn:oid:`, a URI as it is, a local name → `fhir_local_issuer_prefix` + name. "
        "Then the calling AE's system (`fhir_patient_system_by_ae`), then `fhir_default_patient_system`.",
    ),
    MappingRow(
        "PatientName",
        "Patient.name",
        "One HumanName (use official) per component group; with any ideographic or phonetic group each is "
        "marked ABC/IDE/SYL with the `iso21090-EN-representation` extension. family/given (given and middle)/"
        "prefix/suffix from the components, `text` in the group's display order (given first for alphabetic "
        "names, family first for ideographic ones). Decoded from the raw bytes with the declared character "
        "set, or the one its escape sequences name. Empty groups (`^^`) are dropped. The latest instance wins.",
    ),
    MappingRow(
        "PatientBirthDate",
        "Patient.birthDate",
        "DA (also ACR-NEMA `YYYY.MM.DD`); a date that does not exist is left out. The latest instance wins.",
    ),
    MappingRow(
        "PatientSex",
        "Patient.gender",
        "M → male, F → female, O → other, else unknown. `unknown` never overwrites a gender the server has.",
    ),
    # --- ImagingStudy ---
    MappingRow(
        "StudyInstanceUID",
        "ImagingStudy.identifier (use official)",
        "`urn:dicom:uid` | `urn:oid:<uid>`; also the key of the conditional update that keeps one ImagingStudy.",
    ),
    MappingRow(
        "AccessionNumber",
        "ImagingStudy.identifier (use usual, type ACSN), ImagingStudy.basedOn.identifier",
        "System from the issuer below, else `fhir_default_accession_system`.",
    ),
    MappingRow(
        "IssuerOfAccessionNumberSequence>LocalNamespaceEntityID, "
        "IssuerOfAccessionNumberSequence>UniversalEntityID, "
        "IssuerOfAccessionNumberSequence>UniversalEntityIDType",
        "ImagingStudy.identifier.system (ACSN)",
        "Universal id by type as for the patient, else the local name under `fhir_local_issuer_prefix`.",
    ),
    MappingRow(
        "RequestAttributesSequence>PlacerOrderNumberImagingServiceRequest, PlacerOrderNumberImagingServiceRequest",
        "ImagingStudy.basedOn.identifier (type PLAC)",
        "The order the study fulfils (a ServiceRequest identified, not referenced). Read from the first "
        "RequestAttributesSequence item carrying it, else the top level.",
    ),
    MappingRow(
        "OrderPlacerIdentifierSequence>LocalNamespaceEntityID, "
        "OrderPlacerIdentifierSequence>UniversalEntityID, "
        "OrderPlacerIdentifierSequence>UniversalEntityIDType",
        "ImagingStudy.basedOn.identifier.system (PLAC)",
        "As for the accession number; without an issuer the identifier has no system.",
    ),
    MappingRow("StudyID", "ImagingStudy.identifier (use secondary)", "Type text `DICOM Study ID`."),
    MappingRow(
        "StudyDate, StudyTime, TimezoneOffsetFromUTC",
        "ImagingStudy.started",
        "With TimezoneOffsetFromUTC that offset; without it the site's zone (`fhir_default_timezone`, by "
        "default the host's), DST gaps and overlaps take the offset in force before the change. An offset "
        "outside −12:00…+14:00 leaves the date alone. ACR-NEMA `HH:MM:SS` is read.",
    ),
    MappingRow("StudyDescription", "ImagingStudy.description", "The latest instance wins."),
    MappingRow(
        "ReferringPhysicianName",
        "ImagingStudy.referrer",
        "Display only (no Practitioner is created); the first name (R4 allows one).",
    ),
    MappingRow("NameOfPhysiciansReadingStudy", "ImagingStudy.interpreter", "Display only, one per name."),
    MappingRow(
        "ProcedureCodeSequence>CodeValue, ProcedureCodeSequence>CodingSchemeDesignator, "
        "ProcedureCodeSequence>CodeMeaning",
        "ImagingStudy.procedureCode",
        "Coded as described under *Codes*; an unknown scheme keeps only the meaning as text.",
    ),
    MappingRow(
        "RequestAttributesSequence>ReasonForRequestedProcedureCodeSequence, "
        "ReasonForRequestedProcedureCodeSequence, RequestAttributesSequence>ReasonForTheRequestedProcedure, "
        "ReasonForTheRequestedProcedure",
        "ImagingStudy.reasonCode",
        "Codes as under *Codes*, the free text as a text-only CodeableConcept.",
    ),
    MappingRow(
        "InstitutionalDepartmentName",
        "ImagingStudy.location.display",
        "A Location named, not referenced: DICOM names the department only.",
    ),
    MappingRow(
        "Modality",
        "ImagingStudy.modality, ImagingStudy.series.modality",
        "`series.modality` keeps every value (empty → `OT`); `ImagingStudy.modality` lists acquisition "
        "modalities only (DICOM CID 29: not SR, KO, PR, RTPLAN, OT ...). System DCM.",
    ),
    # --- Series ---
    MappingRow("SeriesInstanceUID", "ImagingStudy.series.uid", "As is."),
    MappingRow("SeriesNumber", "ImagingStudy.series.number", "Negative values are left out (unsignedInt)."),
    MappingRow("SeriesDescription", "ImagingStudy.series.description", "The latest instance of the series wins."),
    MappingRow("SeriesDate, SeriesTime", "ImagingStudy.series.started", "As for `started`, with the study's offset."),
    MappingRow(
        "AnatomicRegionSequence>CodeValue, AnatomicRegionSequence>CodingSchemeDesignator, "
        "AnatomicRegionSequence>CodeMeaning",
        "ImagingStudy.series.bodySite",
        "First choice: the first code whose scheme is known.",
    ),
    MappingRow(
        "BodyPartExamined",
        "ImagingStudy.series.bodySite",
        "Second choice: the SNOMED CT code PS3.16 Annex L gives the defined term; an unknown term is left out.",
    ),
    MappingRow(
        "Laterality, ImageLaterality",
        "ImagingStudy.series.laterality",
        "Laterality (R/L/B) as SNOMED CT; else ImageLaterality when every image of the series has the same one.",
    ),
    MappingRow(
        "PerformingPhysicianName",
        "ImagingStudy.series.performer (function PRF)",
        "Display only, one per name.",
    ),
    MappingRow("OperatorsName", "ImagingStudy.series.performer", "Display only, one per name, no function."),
    MappingRow(
        "Manufacturer, ManufacturerModelName",
        "ImagingStudy.series.performer (actor type Device)",
        "Both joined into one display.",
    ),
    MappingRow("InstitutionName", "ImagingStudy.series.performer (actor type Organization)", "Display only."),
    # --- Instance ---
    MappingRow("SOPInstanceUID", "ImagingStudy.series.instance.uid", "As is."),
    MappingRow("SOPClassUID", "ImagingStudy.series.instance.sopClass", "`urn:ietf:rfc:3986` | `urn:oid:<uid>`."),
    MappingRow("InstanceNumber", "ImagingStudy.series.instance.number", "Negative values are left out."),
    MappingRow(
        "ContentLabel, ConceptNameCodeSequence>CodeMeaning, DocumentTitle, ImageType",
        "ImagingStudy.series.instance.title",
        "The first present, in that order.",
    ),
    MappingRow(
        "ConceptNameCodeSequence>CodeValue, ConceptNameCodeSequence>CodingSchemeDesignator, "
        "CurrentRequestedProcedureEvidenceSequence>StudyInstanceUID, "
        "CurrentRequestedProcedureEvidenceSequence>ReferencedSeriesSequence>ReferencedSOPSequence>"
        "ReferencedSOPInstanceUID",
        "ImagingStudy.series.instance (left out), ImagingStudy.status",
        "A Key Object Selection document titled DCM 113001, 113037, 113038 or 113039 (an IHE IOCM rejection "
        "note) removes the instances of its study it names from the next revision, and is not listed itself; "
        "counts follow and an emptied series disappears. A study left with no instance becomes "
        "`entered-in-error` (113037, 113038) or `cancelled` (113001, 113039). At most "
        "`STUDYSTREAM_RECEIVER_REJECTION_MAX_INSTANCES` references are read.",
    ),
    # --- Steering only ---
    MappingRow(
        "RequestAttributesSequence",
        "—",
        "Searched for the request attributes above (first item carrying each).",
    ),
    MappingRow(
        "ConceptNameCodeSequence, LongCodeValue, URNCodeValue",
        "—",
        "Read for titles and codes: LongCodeValue and URNCodeValue stand in for an absent CodeValue.",
    ),
)


def table_keywords() -> set[str]:
    """Every DICOM keyword the table names (item paths split at ``>``)."""
    return {part.strip() for row in MAPPING_TABLE for path in row.dicom.split(",") for part in path.split(">")}


def render(coding_schemes: dict[str, str]) -> str:
    """``docs/mapping.md``: the table, then the rules that apply across rows."""
    lines = [
        "# DICOM → FHIR R4 mapping",
        "",
        f"Mapping version **{MAPPING_VERSION}** (tag `urn:studystream:mapping-version` on every ImagingStudy). "
        "Generated from `domain/mapping_table.py` by `python -m app.mapping_doc --write docs/mapping.md`; "
        "a test keeps it in step with the code.",
        "",
        "Every string passes one cleaner first: control characters and ISO 2022 escape sequences removed, "
        "leading and trailing blanks trimmed, values of nothing but blanks and punctuation (`^`, `-`, `*`, `?`) "
        "dropped. Text attributes are clipped to their VR's maximum length when the event is built.",
        "",
        "| DICOM | FHIR | rule |",
        "|---|---|---|",
    ]
    for row in MAPPING_TABLE:
        dicom = ", ".join(f"`{p.strip()}`" for p in row.dicom.split(","))
        lines.append(f"| {dicom} | {row.fhir} | {row.rule.replace('|', chr(92) + '|')} |")
    lines += [
        "",
        "## Which values win",
        "",
        "Within one patient identity, the latest received instance's non-empty value of each patient and "
        "study attribute wins (older instances fill only what it leaves empty); series attributes follow "
        "the latest instance of the series. The Patient is updated when its name, gender or birth date "
        "changes (`STUDYSTREAM_FHIR_UPDATE_PATIENT`), with `If-Match` on the version read, touching no other "
        "element: addresses, telecoms, other identifiers and links stay as the server has them.",
        "",
        "## Two patients in one study",
        "",
        "Instances of one StudyInstanceUID whose patient identity (PatientID and its issuer system) differs "
        "put the study in `conflict`: it is not uploaded, the web view lists the identities by hash, the "
        "ready record goes to the dead-letter topic with reason `patient_conflict`. It leaves the state "
        "when an operator runs `studystream resolve <study uid> --patient <identity key>`, which files it "
        "under that identity for the identities present then; an instance of yet another identity opens "
        "the conflict again. A study is never filed under a patient silently.",
        "",
        "## Codes",
        "",
        "A code's Coding Scheme Designator becomes the Coding's system through the table below, "
        "`STUDYSTREAM_FHIR_CODING_SYSTEMS` (for local `99…` schemes) first. SRT (SNOMED RT) codes are "
        "translated to SNOMED CT with the equivalences PS3.16 publishes; those without one keep "
        "`http://snomed.info/srt`. A code of an unknown scheme keeps its meaning as text, no Coding.",
        "",
        "| designator | system |",
        "|---|---|",
    ]
    lines += [f"| `{scheme}` | `{system}` |" for scheme, system in sorted(coding_schemes.items())]
    lines += [
        "",
        "## Replaying after a mapping change",
        "",
        "A revision already on the server is written again when its mapping-version tag is older than "
        f"{MAPPING_VERSION}: stop the workers and run `studystream replay --to-earliest` (the ready topic; see the "
        "README) to rewrite every study written by an older mapping; newer revisions are never replaced by older ones.",
        "",
    ]
    return "\n".join(lines)
