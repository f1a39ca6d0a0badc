"""The domain's option objects built from the settings, once for every agent that needs them."""

from __future__ import annotations

from app.settings import Settings
from domain.mapping_options import MappingOptions
from domain.patient import IdentityOptions


def mapping_options(settings: Settings) -> MappingOptions:
    return MappingOptions(
        default_patient_system=settings.fhir_default_patient_system,
        default_accession_system=settings.fhir_default_accession_system,
        local_issuer_prefix=settings.fhir_local_issuer_prefix,
        default_timezone=settings.fhir_default_timezone,
        dicomweb_base_url=settings.fhir_dicomweb_base_url.rstrip("/"),
        revision_tag_system=settings.fhir_revision_tag_system,
        patient_system_by_ae=settings.fhir_patient_system_by_ae,
        coding_systems=settings.fhir_coding_systems,
        update_patient=settings.fhir_update_patient,
    )


def identity_options(settings: Settings) -> IdentityOptions:
    """How the aggregator names patient identities: as the mapping does (one rule, :mod:`domain.patient`)."""
    return mapping_options(settings).identity
