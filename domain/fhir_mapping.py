"""One study revision (:class:`domain.ready.StudyReady`) → FHIR R4 Patient, ImagingStudy, Endpoint and the
transaction Bundle that writes them idempotently. Pure: no I/O, no clock, no randomness.

The resources are built as fhirclient model objects, which check every element's type and name; the
Bundle is returned as JSON (a dict). Building one revision twice gives byte-identical JSON: full URLs
are name-based UUIDs of the study and the patient identifier.

Idempotency, in the Bundle itself:

- Patient: conditional create (``ifNoneExist: identifier=<system>|<value>``): never created twice.
- Endpoint: conditional create on its address (as an ``urn:ietf:rfc:3986`` identifier).
- ImagingStudy: conditional update on ``urn:dicom:uid|urn:oid:<StudyInstanceUID>``; when the caller
  knows the stored version (:class:`StoredStudy`), an update of that resource id with ``ifMatch``,
  so a concurrent writer makes the server answer 412 instead of being overwritten.
- The revision travels in ``meta.tag`` (system :attr:`MappingOptions.revision_tag_system`, code = the
  revision); :func:`stored_revision` reads it back to keep a lower revision from replacing a higher one.
  A second tag carries :data:`MAPPING_VERSION`: a revision already on the server is written again when
  it was written by an older mapping (so replaying ``imaging.study.ready`` after a mapping fix repairs
  the resources), see :func:`is_newer`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from fhirclient.models.bundle import Bundle
from fhirclient.models.endpoint import Endpoint
from fhirclient.models.imagingstudy import ImagingStudy
from fhirclient.models.patient import Patient

from domain.events import CodedValue
from domain.fhir_values import (
    DCM,
    body_site,
    coding_system,
    fhir_date,
    fhir_datetime,
    fhir_gender,
    human_names,
    issuer_system,
    laterality,
    oid_urn,
    pn_display,
    pn_values,
)
from domain.ready import ReadyInstance, ReadySeries, StudyReady

DICOM_UID_SYSTEM = "urn:dicom:uid"
URI_SYSTEM = "urn:ietf:rfc:3986"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ENDPOINT_CONNECTION_TYPE = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
ENDPOINT_PAYLOAD_TYPE = "http://terminology.hl7.org/CodeSystem/endpoint-payload-type"
# A study without PatientID still needs a subject: one Patient per study, found again by the study UID.
PATIENT_OF_STUDY_SYSTEM = "urn:studystream:patient-of-study"
UNKNOWN_MODALITY = "OT"  # DICOM "Other": ImagingStudy.series.modality is mandatory
_FULL_URL_NAMESPACE = uuid.UUID("7c1f3c7e-7f4e-4a43-9a55-5e0d51d2a6b1")


@dataclass(frozen=True, slots=True)
class MappingOptions:
    """The settings the mapping depends on (see the ``fhir_*`` fields of :class:`app.settings.Settings`)."""

    default_patient_system: str = "urn:studystream:patient-id"
    default_accession_system: str = "urn:studystream:accession"
    local_issuer_prefix: str = "urn:studystream:issuer:"
    default_timezone: str = "UTC"
    dicomweb_base_url: str = ""
    revision_tag_system: str = "urn:studystream:study-revision"


# Bump when a change of this module should rewrite resources already on the server (then replay
# imaging.study.ready). Resources written before the tag existed read as version 0.
MAPPING_VERSION = 1
MAPPING_VERSION_TAG_SYSTEM = "urn:studystream:mapping-version"


@dataclass(frozen=True, slots=True)
class StoredStudy:
    """The ImagingStudy the server holds for a study UID: its id, version, StudyStream revision and mapping.

    ``old_tags`` are the StudyStream tags the server carried over from earlier versions (servers such
    as HAPI merge ``meta.tag`` across versions): the uploader removes them once a newer one is written.
    """

    id: str
    version: str | None
    revision: tuple[int, int]  # (generation, revision)
    mapping_version: int = 0
    tags: tuple[tuple[str, str], ...] = ()  # (system, code) of every StudyStream tag the resource carries


def is_newer(version: tuple[int, int], stored: StoredStudy | None, mapping_version: int | None = None) -> bool:
    """Whether writing ``version`` = (generation, revision), by ``mapping_version``, improves on what the server holds.

    A higher revision always does; the same revision only when the stored one came from an older
    mapping; a lower revision never (it would hide instances the server already lists).
    """
    if stored is None:
        return True
    mapping = MAPPING_VERSION if mapping_version is None else mapping_version
    return (version, mapping) > (stored.revision, stored.mapping_version)


# --- Identifiers ---------------------------------------------------------------------------------


def study_identifier(study_uid: str) -> dict[str, str]:
    return {"system": DICOM_UID_SYSTEM, "value": oid_urn(study_uid)}


def study_search_query(study_uid: str) -> str:
    """The search that finds a study's ImagingStudy: ``identifier=urn:dicom:uid|urn:oid:<uid>``."""
    return token_query(DICOM_UID_SYSTEM, oid_urn(study_uid))


def escape_token(text: str) -> str:
    """A token part escaped as FHIR search says (``\\``, ``\\,``, ``\\|``, ``\\$``), before URL encoding.

    Percent-encoding alone is not enough: a server decodes ``%2C`` back into a comma and reads
    ``sys|12%2C34`` as ``sys|12`` OR ``34`` (the wrong patient, if one of them exists).
    """
    return text.replace("\\", "\\\\").replace(",", "\\,").replace("|", "\\|").replace("$", "\\$")


def token_query(system: str, value: str) -> str:
    """``identifier=<system>|<value>``: both parts escaped the FHIR way, then URL-encoded."""
    return f"identifier={quote(escape_token(system), safe=':/.-_~')}|{quote(escape_token(value), safe=':/.-_~')}"


def patient_identifier(ready: StudyReady, options: MappingOptions) -> tuple[str, str]:
    """(system, value) identifying the study's patient: PatientID within its issuer's system.

    No PatientID: a patient of this study alone, so unrelated anonymous studies never merge.
    """
    patient = ready.patient
    if not patient.id.strip():
        return PATIENT_OF_STUDY_SYSTEM, oid_urn(ready.study_uid)
    return (
        issuer_system(patient.issuer, options.default_patient_system, options.local_issuer_prefix),
        patient.id.strip(),
    )


def full_url(kind: str, key: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_FULL_URL_NAMESPACE, f'{kind}|{key}')}"


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


def build_imaging_study(
    ready: StudyReady, options: MappingOptions, patient_ref: str, endpoint_ref: str | None = None
) -> ImagingStudy:
    study = ready.study
    data: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "meta": {"tag": [revision_tag(ready.version, options), mapping_version_tag()]},
        "identifier": [{"use": "official", **study_identifier(study.uid)}],
        "status": "available",
        "subject": {"reference": patient_ref, "type": "Patient"},
        "numberOfSeries": ready.number_of_series,
        "numberOfInstances": ready.number_of_instances,
        "series": [_series(s, options, study.timezone_offset) for s in ready.series],
    }
    if study.accession_number.strip():
        data["identifier"].append(
            {
                "use": "usual",
                "type": {"coding": [{"system": V2_0203, "code": "ACSN"}]},
                "system": issuer_system(
                    study.accession_issuer, options.default_accession_system, options.local_issuer_prefix
                ),
                "value": study.accession_number.strip(),
            }
        )
    modalities = [m for m in ready.modalities if m.strip()]
    if modalities:
        data["modality"] = [{"system": DCM, "code": m} for m in modalities]
    started = fhir_datetime(study.date, study.time, study.timezone_offset, options.default_timezone)
    if started:
        data["started"] = started
    referrer = pn_display(study.referring_physician)
    if referrer:
        data["referrer"] = {"display": referrer, "type": "Practitioner"}
    if endpoint_ref:
        data["endpoint"] = [{"reference": endpoint_ref, "type": "Endpoint"}]
    procedures = [_codeable(c) for c in study.procedure_codes if c.code or c.meaning]
    if procedures:
        data["procedureCode"] = procedures
    if study.institution.strip():
        # ImagingStudy.location is a Reference(Location); DICOM only names the institution.
        data["location"] = {"display": study.institution.strip(), "type": "Location"}
    if study.description.strip():
        data["description"] = study.description.strip()
    return ImagingStudy(data)


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


def parse_revision_code(code: object) -> tuple[int, int] | None:
    """A revision tag's code: ``g.r``, or ``r`` as written before generations were tagged (generation 1)."""
    text = str(code)
    head, dot, tail = text.partition(".")
    if dot and head.isdigit() and tail.isdigit():
        return (int(head), int(tail))
    if not dot and text.isdigit():
        return (1, int(text))
    return None


def _tags(resource: dict[str, Any], system: str) -> list[dict[str, Any]]:
    meta = resource.get("meta")
    tags = meta.get("tag") if isinstance(meta, dict) else None
    return [t for t in tags or () if isinstance(t, dict) and t.get("system") == system]


def stored_revision(resource: dict[str, Any], options: MappingOptions) -> tuple[int, int]:
    """The highest StudyStream (generation, revision) tagged on a stored resource; (0, 0) when untagged.

    The highest, not the only: servers that carry tags over from earlier versions keep old ones.
    """
    parsed = (parse_revision_code(t.get("code")) for t in _tags(resource, options.revision_tag_system))
    return max((p for p in parsed if p is not None), default=(0, 0))


def stored_mapping_version(resource: dict[str, Any]) -> int:
    """The highest mapping version tagged on a stored resource (the newest mapping that wrote it); 0 when untagged."""
    codes = [int(t["code"]) for t in _tags(resource, MAPPING_VERSION_TAG_SYSTEM) if str(t.get("code", "")).isdigit()]
    return max(codes, default=0)


def studystream_tags(resource: dict[str, Any], options: MappingOptions) -> tuple[tuple[str, str], ...]:
    """(system, code) of every revision and mapping-version tag on a stored resource."""
    found = _tags(resource, options.revision_tag_system) + _tags(resource, MAPPING_VERSION_TAG_SYSTEM)
    return tuple((str(t["system"]), str(t.get("code", ""))) for t in found)


def outdated_tags(stored: StoredStudy, written: dict[str, Any], options: MappingOptions) -> list[dict[str, str]]:
    """The StudyStream tags the stored resource carries besides those ``written`` has: what ``$meta-delete`` removes."""
    current = {(t["system"], t["code"]) for t in (written.get("meta") or {}).get("tag") or ()}
    return [{"system": system, "code": code} for system, code in stored.tags if (system, code) not in current]


def meta_delete_parameters(tags: list[dict[str, str]]) -> dict[str, Any]:
    """The ``Parameters`` body of ``$meta-delete`` removing ``tags``."""
    return {"resourceType": "Parameters", "parameter": [{"name": "meta", "valueMeta": {"tag": tags}}]}


def _series(series: ReadySeries, options: MappingOptions, tz_offset: str) -> dict[str, Any]:
    """One series; TimezoneOffsetFromUTC is an instance-level attribute, so it applies to series times too."""
    info = series
    data: dict[str, Any] = {
        "uid": info.uid,
        "modality": {"system": DCM, "code": info.modality.strip() or UNKNOWN_MODALITY},
        "numberOfInstances": series.number_of_instances,
        "instance": [_instance(i) for i in series.instances],
    }
    # A negative IS is valid DICOM but no unsignedInt: left out. Above 2^31-1 the DICOM value itself is
    # invalid (IS is a signed 32-bit integer): it is passed on, and the server's rejection dead-letters it.
    if info.number is not None and info.number >= 0:
        data["number"] = info.number
    if info.description.strip():
        data["description"] = info.description.strip()
    site = body_site(info.body_part)
    if site:
        data["bodySite"] = site
    side = laterality(info.laterality)
    if side:
        data["laterality"] = side
    started = fhir_datetime(info.date, info.time, tz_offset, options.default_timezone)
    if started:
        data["started"] = started
    performers = _performers(info.performing_physician, info.operators_name, info.manufacturer, info.model)
    if performers:
        data["performer"] = performers
    return data


def _performers(physicians: str, operators: str, manufacturer: str, model: str) -> list[dict[str, Any]]:
    performers: list[dict[str, Any]] = [
        {
            "function": {"coding": [{"system": PARTICIPATION_TYPE, "code": "PRF", "display": "performer"}]},
            "actor": {"display": pn_display(pn), "type": "Practitioner"},
        }
        for pn in pn_values(physicians)
    ]
    performers += [{"actor": {"display": pn_display(pn), "type": "Practitioner"}} for pn in pn_values(operators)]
    device = " ".join(part.strip() for part in (manufacturer, model) if part.strip())
    if device:
        performers.append({"actor": {"display": device, "type": "Device"}})
    return performers


def _instance(instance: ReadyInstance) -> dict[str, Any]:
    data: dict[str, Any] = {
        "uid": instance.uid,
        "sopClass": {"system": URI_SYSTEM, "code": oid_urn(instance.sop_class_uid)},
    }
    if instance.number is not None and instance.number >= 0:
        data["number"] = instance.number
    if instance.title.strip():
        data["title"] = instance.title.strip()
    return data


def _codeable(code: CodedValue) -> dict[str, Any]:
    coding: dict[str, str] = {"code": code.code}
    system = coding_system(code.scheme)
    if system:
        coding["system"] = system
    if code.meaning:
        coding["display"] = code.meaning
    concept: dict[str, Any] = {"coding": [coding]} if code.code else {}
    if code.meaning:
        concept["text"] = code.meaning
    return concept


# --- Bundle --------------------------------------------------------------------------------------


def build_transaction_bundle(
    ready: StudyReady, options: MappingOptions, stored: StoredStudy | None = None
) -> dict[str, Any]:
    """The transaction Bundle (JSON) writing one study revision: Patient, Endpoint if configured, ImagingStudy.

    ``stored``: the ImagingStudy the server already holds, if the caller looked it up; then the study
    is updated by id with ``ifMatch`` on its version (optimistic locking) instead of by condition.
    """
    system, value = patient_identifier(ready, options)
    patient_url = full_url("Patient", f"{system}|{value}")
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": patient_url,
            "resource": build_patient(ready, options).as_json(),
            "request": {"method": "POST", "url": "Patient", "ifNoneExist": token_query(system, value)},
        }
    ]
    endpoint_url = None
    if options.dicomweb_base_url:
        endpoint_url = full_url("Endpoint", options.dicomweb_base_url)
        entries.append(
            {
                "fullUrl": endpoint_url,
                "resource": build_endpoint(options.dicomweb_base_url).as_json(),
                "request": {
                    "method": "POST",
                    "url": "Endpoint",
                    "ifNoneExist": token_query(URI_SYSTEM, options.dicomweb_base_url),
                },
            }
        )
    study = build_imaging_study(ready, options, patient_url, endpoint_url).as_json()
    if stored is None:
        request = {"method": "PUT", "url": f"ImagingStudy?{study_search_query(ready.study_uid)}"}
    else:
        study["id"] = stored.id
        request = {"method": "PUT", "url": f"ImagingStudy/{stored.id}"}
        if stored.version:
            request["ifMatch"] = f'W/"{stored.version}"'
    entries.append({"fullUrl": full_url("ImagingStudy", ready.study_uid), "resource": study, "request": request})
    return Bundle({"resourceType": "Bundle", "type": "transaction", "entry": entries}).as_json()


def bundle_file_name(study_uid: str, version: tuple[int, int]) -> str:
    """``<study_uid>-r<revision>.json`` (``-g<generation>-r<revision>`` after a state reset): a UID is
    digits and dots, safe as a file name."""
    generation, revision = version
    return f"{study_uid}-r{revision}.json" if generation <= 1 else f"{study_uid}-g{generation}-r{revision}.json"
