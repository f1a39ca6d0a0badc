"""One study revision (:class:`domain.ready.StudyReady`) → FHIR R4 Patient, ImagingStudy and Endpoint (pure).

The resources are built as fhirclient model objects, which check every element's type and name. Every
string passes :func:`domain.fhir_values.display_text` (no control characters, no escape sequences, no
placeholders). ``docs/mapping.md`` lists each DICOM attribute and the element it becomes
(:data:`domain.mapping_table.MAPPING_TABLE`; a test keeps the two in step).
"""

from __future__ import annotations

from typing import Any

from fhirclient.models.endpoint import Endpoint
from fhirclient.models.imagingstudy import ImagingStudy
from fhirclient.models.patient import Patient

from domain.events import CodedValue
from domain.fhir_values import (
    DCM,
    acquisition_modalities,
    body_site,
    concept,
    display_text,
    fhir_gender,
    human_names,
    laterality,
    oid_urn,
    pn_display,
    pn_values,
)
from domain.local_time import fhir_date, fhir_datetime
from domain.mapping_options import MappingOptions as MappingOptions  # re-exported: the mapping's options
from domain.patient import PATIENT_OF_STUDY_SYSTEM, issuer_system, patient_identity
from domain.ready import ReadyInstance, ReadySeries, StudyReady

DICOM_UID_SYSTEM = "urn:dicom:uid"
URI_SYSTEM = "urn:ietf:rfc:3986"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ENDPOINT_CONNECTION_TYPE = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
ENDPOINT_PAYLOAD_TYPE = "http://terminology.hl7.org/CodeSystem/endpoint-payload-type"
UNKNOWN_MODALITY = "OT"  # DICOM "Other": ImagingStudy.series.modality is mandatory
# The Patient elements StudyStream writes; an update leaves every other element as the server has it.
PATIENT_OWNED_ELEMENTS = ("name", "gender", "birthDate")

# Bump when a change of the mapping should rewrite resources already on the server (then replay
# imaging.study.ready). Resources written before the tag existed read as version 0.
# 2: patient-safe mapping (local times, SRT/SCT, CID 29 modalities, issuers, request attributes, clean strings).
MAPPING_VERSION = 2
MAPPING_VERSION_TAG_SYSTEM = "urn:studystream:mapping-version"


__all__ = ["PATIENT_OF_STUDY_SYSTEM", "MappingOptions", "build_imaging_study", "build_patient"]


# --- Identifiers ---------------------------------------------------------------------------------


def study_identifier(study_uid: str) -> dict[str, str]:
    return {"system": DICOM_UID_SYSTEM, "value": oid_urn(study_uid)}


def patient_identifier(ready: StudyReady, options: MappingOptions) -> tuple[str, str]:
    """(system, value) identifying the study's patient (:func:`domain.patient.patient_identity`)."""
    patient = ready.patient
    return patient_identity(
        patient.id,
        patient.issuer,
        patient.issuer_universal,
        patient.issuer_universal_type,
        patient.calling_ae,
        ready.study_uid,
        options.identity,
    )


def accession_identifier(ready: StudyReady, options: MappingOptions) -> dict[str, Any] | None:
    study = ready.study
    value = display_text(study.accession_number)
    if not value:
        return None
    system = issuer_system(
        study.accession_issuer,
        options.default_accession_system,
        options.local_issuer_prefix,
        study.accession_issuer_universal,
        study.accession_issuer_universal_type,
    )
    return {"type": {"coding": [{"system": V2_0203, "code": "ACSN"}]}, "system": system, "value": value}


def placer_identifier(ready: StudyReady, options: MappingOptions) -> dict[str, Any] | None:
    study = ready.study
    value = display_text(study.placer_order_number)
    if not value:
        return None
    identifier: dict[str, Any] = {"type": {"coding": [{"system": V2_0203, "code": "PLAC"}]}, "value": value}
    if study.placer_order_issuer.strip() or study.placer_order_issuer_universal.strip():
        identifier["system"] = issuer_system(
            study.placer_order_issuer,
            "",
            options.local_issuer_prefix,
            study.placer_order_issuer_universal,
            study.placer_order_issuer_universal_type,
        )
    return identifier


def revision_tag(version: tuple[int, int], options: MappingOptions) -> dict[str, str]:
    """``<generation>.<revision>``: revisions of a later state generation come after every earlier one."""
    generation, revision = version
    return {
        "system": options.revision_tag_system,
        "code": f"{generation}.{revision}",
        "display": f"StudyStream revision {revision} (state generation {generation})",
    }


def mapping_version_tag() -> dict[str, str]:
    return {
        "system": MAPPING_VERSION_TAG_SYSTEM,
        "code": str(MAPPING_VERSION),
        "display": f"StudyStream FHIR mapping version {MAPPING_VERSION}",
    }


# --- Resources -----------------------------------------------------------------------------------


def build_patient(ready: StudyReady, options: MappingOptions) -> Patient:
    system, value = patient_identifier(ready, options)
    data: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [{"use": "usual", "system": system, "value": value}],
        "gender": fhir_gender(ready.patient.sex),
    }
    names = human_names(ready.patient.name)
    if names:
        data["name"] = names
    birth_date = fhir_date(ready.patient.birth_date)
    if birth_date:
        data["birthDate"] = birth_date
    return Patient(data)


def build_endpoint(base_url: str) -> Endpoint:
    return Endpoint(
        {
            "resourceType": "Endpoint",
            "identifier": [{"system": URI_SYSTEM, "value": base_url}],
            "status": "active",
            "connectionType": {"system": ENDPOINT_CONNECTION_TYPE, "code": "dicom-wado-rs"},
            "name": "DICOMweb WADO-RS",
            "payloadType": [{"coding": [{"system": ENDPOINT_PAYLOAD_TYPE, "code": "any"}], "text": "DICOM"}],
            "payloadMimeType": ["application/dicom"],
            "address": base_url,
        }
    )


def _practitioners(names: str) -> list[dict[str, str]]:
    return [{"display": pn_display(pn), "type": "Practitioner"} for pn in pn_values(names)]


def _concepts(codes: tuple[CodedValue, ...], options: MappingOptions) -> list[dict[str, Any]]:
    return [c for c in (concept(code, options.coding_systems) for code in codes) if c]


def build_imaging_study(
    ready: StudyReady, options: MappingOptions, patient_ref: str, endpoint_ref: str | None = None
) -> ImagingStudy:
    study = ready.study
    data: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "meta": {"tag": [revision_tag(ready.version, options), mapping_version_tag()]},
        "identifier": [{"use": "official", **study_identifier(study.uid)}],
        "status": ready.fhir_status or ("registered" if ready.registration else "available"),
        "subject": {"reference": patient_ref, "type": "Patient"},
        "numberOfSeries": ready.number_of_series,
        "numberOfInstances": ready.number_of_instances,
    }
    if ready.series:  # none left when rejection notes removed every instance (FHIR forbids empty arrays)
        data["series"] = [_series(s, options, study.timezone_offset) for s in ready.series]
    accession = accession_identifier(ready, options)
    if accession:
        data["identifier"].append({"use": "usual", **accession})
    study_id = display_text(study.study_id)
    if study_id:
        data["identifier"].append({"use": "secondary", "type": {"text": "DICOM Study ID"}, "value": study_id})
    modalities = acquisition_modalities(s.modality for s in ready.series)
    if modalities:
        data["modality"] = [{"system": DCM, "code": m} for m in modalities]
    started = fhir_datetime(study.date, study.time, study.timezone_offset, options.default_timezone)
    if started:
        data["started"] = started
    based_on = [
        {"type": "ServiceRequest", "identifier": identifier}
        for identifier in (accession, placer_identifier(ready, options))
        if identifier
    ]
    if based_on:
        data["basedOn"] = based_on
    referrer = _practitioners(study.referring_physician)
    if referrer:
        data["referrer"] = referrer[0]  # 0..1 in R4
    interpreters = _practitioners(study.reading_physicians)
    if interpreters:
        data["interpreter"] = interpreters
    if endpoint_ref:
        data["endpoint"] = [{"reference": endpoint_ref, "type": "Endpoint"}]
    procedures = _concepts(study.procedure_codes, options)
    if procedures:
        data["procedureCode"] = procedures
    reasons = _concepts(study.reason_codes, options)
    reason_text = display_text(study.reason_text)
    if reason_text:
        reasons.append({"text": reason_text})
    if reasons:
        data["reasonCode"] = reasons
    department = display_text(study.department)
    if department:
        # ImagingStudy.location is a Reference(Location); DICOM only names the department.
        data["location"] = {"display": department, "type": "Location"}
    description = display_text(study.description)
    if description:
        data["description"] = description
    return ImagingStudy(data)


def _series(series: ReadySeries, options: MappingOptions, tz_offset: str) -> dict[str, Any]:
    """One series; TimezoneOffsetFromUTC is an instance-level attribute, so it applies to series times too."""
    modality = (display_text(series.modality) or UNKNOWN_MODALITY).upper()
    data: dict[str, Any] = {
        "uid": series.uid,
        "modality": {"system": DCM, "code": modality},
        "numberOfInstances": series.number_of_instances,
        "instance": [_instance(i) for i in series.instances],
    }
    # A negative IS is valid DICOM but no unsignedInt: left out. Above 2^31-1 the DICOM value itself is
    # invalid (IS is a signed 32-bit integer): it is passed on, and the server's rejection dead-letters it.
    if series.number is not None and series.number >= 0:
        data["number"] = series.number
    description = display_text(series.description)
    if description:
        data["description"] = description
    site = body_site(series.anatomic_regions, series.body_part, options.coding_systems)
    if site:
        data["bodySite"] = site
    side = laterality(series.laterality, series.image_lateralities)
    if side:
        data["laterality"] = side
    started = fhir_datetime(series.date, series.time, tz_offset, options.default_timezone)
    if started:
        data["started"] = started
    performers = _performers(series)
    if performers:
        data["performer"] = performers
    return data


def _performers(series: ReadySeries) -> list[dict[str, Any]]:
    performers: list[dict[str, Any]] = [
        {
            "function": {"coding": [{"system": PARTICIPATION_TYPE, "code": "PRF", "display": "performer"}]},
            "actor": actor,
        }
        for actor in _practitioners(series.performing_physician)
    ]
    performers += [{"actor": actor} for actor in _practitioners(series.operators_name)]
    device = " ".join(p for p in (display_text(series.manufacturer), display_text(series.model)) if p)
    if device:
        performers.append({"actor": {"display": device, "type": "Device"}})
    institution = display_text(series.institution)
    if institution:
        performers.append({"actor": {"display": institution, "type": "Organization"}})
    return performers


def _instance(instance: ReadyInstance) -> dict[str, Any]:
    data: dict[str, Any] = {
        "uid": instance.uid,
        "sopClass": {"system": URI_SYSTEM, "code": oid_urn(instance.sop_class_uid)},
    }
    if instance.number is not None and instance.number >= 0:
        data["number"] = instance.number
    title = display_text(instance.title)
    if title:
        data["title"] = title
    return data


def merge_patient(stored: dict[str, Any], written: dict[str, Any]) -> dict[str, Any] | None:
    """The stored Patient with the elements StudyStream owns (:data:`PATIENT_OWNED_ELEMENTS`) as ``written``
    has them, and its identifier added if missing; ``None`` when that changes nothing.

    Everything else (addresses, telecoms, other identifiers, links, extensions) stays as the server
    (or the master patient index feeding it) has it. An owned element ``written`` leaves out (no
    birth date in the DICOM data) is left as stored: absence in DICOM is no correction.
    """
    merged = {k: v for k, v in stored.items() if k != "meta"}
    for element in PATIENT_OWNED_ELEMENTS:
        if element not in written or (element == "gender" and written[element] == "unknown" and "gender" in stored):
            continue  # no PatientSex in DICOM says nothing about the gender the server knows
        merged[element] = written[element]
    identifiers = list(merged.get("identifier") or [])
    ours = written["identifier"][0]
    if not any(
        isinstance(i, dict) and i.get("system") == ours["system"] and i.get("value") == ours["value"]
        for i in identifiers
    ):
        identifiers.append(ours)
    merged["identifier"] = identifiers
    unchanged = {k: v for k, v in stored.items() if k != "meta"}
    return None if merged == unchanged else merged
