"""The options the FHIR mapping depends on, with their defaults: the one place they are written down.

The ``fhir_*`` settings (:class:`app.settings.Settings`) take their defaults from here; this module has
no heavy imports, so every process reading the settings can load it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from domain.patient import IdentityOptions


@dataclass(frozen=True, slots=True)
class MappingOptions:
    """The settings the mapping depends on (see the ``fhir_*`` fields of :class:`app.settings.Settings`)."""

    default_patient_system: str = "urn:studystream:patient-id"
    default_accession_system: str = "urn:studystream:accession"
    local_issuer_prefix: str = "urn:studystream:issuer:"
    default_timezone: str = "UTC"
    dicomweb_base_url: str = ""
    revision_tag_system: str = "urn:studystream:study-revision"
    patient_system_by_ae: Mapping[str, str] = field(default_factory=dict)
    coding_systems: Mapping[str, str] = field(default_factory=dict)  # local coding scheme designators → URI
    update_patient: bool = True  # write the owned Patient elements when they change (else create only)

    @property
    def identity(self) -> IdentityOptions:
        # Imported here: domain.patient loads pydicom's terminology tables, which the settings do not need.
        from domain.patient import IdentityOptions

        return IdentityOptions(self.default_patient_system, self.local_issuer_prefix, self.patient_system_by_ae)


MAPPING_DEFAULTS = MappingOptions()
