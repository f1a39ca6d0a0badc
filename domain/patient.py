"""Who a study's patient is: identifier systems from issuers, identity keys, and the conflict rule (pure).

A patient is identified by PatientID within a system (FHIR ``Identifier.system``). The system comes from
the first of:

1. IssuerOfPatientIDQualifiersSequence (0010,0024) > UniversalEntityID, read by its type
   (:func:`universal_system`: ISO → ``urn:oid:``, UUID → ``urn:uuid:``, URI as it is);
2. IssuerOfPatientID (0010,0021): an OID or URI as such, a local name under ``local_issuer_prefix``;
3. the calling AE title's system from ``system_by_ae`` (``STUDYSTREAM_FHIR_PATIENT_SYSTEM_BY_AE``): the
   modalities of one site share one system, two sites' equal MRNs stay two patients;
4. ``default_system``.

A study without PatientID gets a patient of its own (system :data:`PATIENT_OF_STUDY_SYSTEM`, value the
study UID), so unrelated anonymous studies never merge.

:func:`identity_key` is a short hash of (system, value): the state, the web view and ``studystream
resolve`` name identities by it, so none of them needs to show a patient identifier.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote

from domain.fhir_values import is_oid, oid_urn

PATIENT_OF_STUDY_SYSTEM = "urn:studystream:patient-of-study"
IDENTITY_KEY_CHARS = 16
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


@dataclass(frozen=True, slots=True)
class IdentityOptions:
    """The settings patient identity depends on (``fhir_default_patient_system`` and friends)."""

    default_system: str = "urn:studystream:patient-id"
    local_issuer_prefix: str = "urn:studystream:issuer:"
    system_by_ae: Mapping[str, str] = field(default_factory=dict)


def universal_system(universal: str, universal_type: str) -> str | None:
    """An HL7 HD universal id → a URI by its UniversalEntityIDType; ``None`` when the pair is not usable.

    ISO with a valid OID → ``urn:oid:``; UUID → ``urn:uuid:`` (lower case); URI → itself when it is one.
    Other types (DNS, X400, X500, ...) and ids that do not match their type give ``None``: the local
    name is used instead.
    """
    value = universal.strip()
    kind = universal_type.strip().upper()
    if not value:
        return None
    if kind == "ISO" and is_oid(value.removeprefix("urn:oid:")):
        return oid_urn(value.removeprefix("urn:oid:"))
    if kind == "UUID" and _UUID.match(value.removeprefix("urn:uuid:")):
        return "urn:uuid:" + value.removeprefix("urn:uuid:").lower()
    if kind == "URI" and _URI_SCHEME.match(value):
        return value
    return None


def issuer_system(
    local: str, default_system: str, local_issuer_prefix: str, universal: str = "", universal_type: str = ""
) -> str:
    """An issuer of an identifier (of a patient, an accession, an order) → ``Identifier.system``.

    A universal id (by its type) wins over the local namespace name. A local name that is an OID
    becomes ``urn:oid:<oid>``, one that is a URI stays as it is, any other (``HOSP``) becomes
    ``<local_issuer_prefix><name>`` percent-encoded, so two issuers stay two systems. No issuer at all
    gives ``default_system``.
    """
    found = universal_system(universal, universal_type)
    if found:
        return found
    issuer = local.strip()
    if not issuer:
        return default_system
    if is_oid(issuer):
        return oid_urn(issuer)
    if _URI_SCHEME.match(issuer):
        return issuer
    return local_issuer_prefix + quote(issuer, safe="")


def patient_identity(
    patient_id: str,
    issuer: str,
    issuer_universal: str,
    issuer_universal_type: str,
    calling_ae: str,
    study_uid: str,
    options: IdentityOptions,
) -> tuple[str, str]:
    """(system, value) identifying a patient, by the rules of the module doc."""
    value = patient_id.strip()
    if not value:
        return PATIENT_OF_STUDY_SYSTEM, oid_urn(study_uid)
    default = options.system_by_ae.get(calling_ae.strip(), options.default_system)
    return issuer_system(issuer, default, options.local_issuer_prefix, issuer_universal, issuer_universal_type), value


def identity_key(system: str, value: str) -> str:
    """A short, stable name for an identity that reveals nothing of it (SHA-256, hex, truncated)."""
    digest = hashlib.sha256(f"{system}|{value}".encode("utf-8", "surrogatepass")).hexdigest()
    return digest[:IDENTITY_KEY_CHARS]
