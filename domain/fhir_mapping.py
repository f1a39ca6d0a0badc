"""One study revision (:class:`domain.ready.StudyReady`) → the transaction Bundle that writes its FHIR
resources (:mod:`domain.fhir_resources`) idempotently. Pure: no I/O, no clock, no randomness.

The Bundle is returned as JSON (a dict). Building one revision twice gives byte-identical JSON: full
URLs are name-based UUIDs of the study and the patient identifier.

Idempotency, in the Bundle itself:

- Patient: conditional create (``ifNoneExist: identifier=<system>|<value>``): never created twice.
  When the caller found it (:class:`StoredPatient`), an update of the elements StudyStream owns
  (:func:`domain.fhir_resources.merge_patient`) with ``ifMatch`` on its version, only when they changed.
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

from domain.fhir_resources import (
    DICOM_UID_SYSTEM,
    MAPPING_VERSION,
    MAPPING_VERSION_TAG_SYSTEM,
    URI_SYSTEM,
    MappingOptions,
    build_endpoint,
    build_imaging_study,
    build_patient,
    merge_patient,
    patient_identifier,
)
from domain.fhir_values import oid_urn
from domain.ready import StudyReady

_FULL_URL_NAMESPACE = uuid.UUID("7c1f3c7e-7f4e-4a43-9a55-5e0d51d2a6b1")


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


@dataclass(frozen=True, slots=True)
class StoredPatient:
    """The Patient the server holds for the study's patient identifier: id, version and the resource itself."""

    id: str
    version: str | None
    resource: dict[str, Any]


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


def patient_search_query(system: str, value: str) -> str:
    """The search that finds a patient by identifier (escaped as :func:`token_query` does)."""
    return token_query(system, value)


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


def full_url(kind: str, key: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_FULL_URL_NAMESPACE, f'{kind}|{key}')}"


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


# --- Bundle --------------------------------------------------------------------------------------


def patient_entry(
    ready: StudyReady, options: MappingOptions, stored: StoredPatient | None
) -> tuple[str, dict[str, Any] | None]:
    """(reference for the ImagingStudy's subject, the Bundle entry writing the Patient or ``None``).

    No stored Patient: a conditional create. A stored one: an update of its owned elements when they
    changed (and ``update_patient``), else no entry at all and a reference to the stored id.
    """
    system, value = patient_identifier(ready, options)
    written = build_patient(ready, options).as_json()
    url = full_url("Patient", f"{system}|{value}")
    if stored is None:
        request = {"method": "POST", "url": "Patient", "ifNoneExist": token_query(system, value)}
        return url, {"fullUrl": url, "resource": written, "request": request}
    reference = f"Patient/{stored.id}"
    merged = merge_patient(stored.resource, written) if options.update_patient else None
    if merged is None:
        return reference, None
    merged["id"] = stored.id
    request = {"method": "PUT", "url": reference}
    if stored.version:
        request["ifMatch"] = f'W/"{stored.version}"'
    return reference, {"fullUrl": url, "resource": merged, "request": request}


def build_transaction_bundle(
    ready: StudyReady,
    options: MappingOptions,
    stored: StoredStudy | None = None,
    stored_patient: StoredPatient | None = None,
) -> dict[str, Any]:
    """The transaction Bundle (JSON) writing one study revision: Patient, Endpoint if configured, ImagingStudy.

    ``stored``: the ImagingStudy the server already holds, if the caller looked it up; then the study
    is updated by id with ``ifMatch`` on its version (optimistic locking) instead of by condition.
    ``stored_patient``: likewise the study's Patient (see :func:`patient_entry`).
    """
    patient_url, patient = patient_entry(ready, options, stored_patient)
    entries: list[dict[str, Any]] = [patient] if patient else []
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
