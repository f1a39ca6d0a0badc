"""The ``imaging.study.ready`` record: one complete revision of a study, with everything the FHIR mapping needs.

Wire format: a UTF-8 JSON object (see :func:`encode_study_ready`), key = StudyInstanceUID. The record
for a 5,000-instance study is about 1 MB; :data:`Settings.max_message_bytes` (8 MiB by default) bounds
it, about 40,000 instances, which the aggregator enforces with ``aggregator_max_instances``.

A revision is identified by (``generation``, ``revision``): ``studystream replay --reset-state`` starts
a new state generation whose revisions start again at 1, and must still come after every revision of
the generation before it (the FHIR server keeps those).

:func:`decode_study_ready` is the uploader's trust boundary: typed (msgspec), strict, bounded.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from domain.errors import InvalidRecordError
from domain.events import CODES_MAX_ITEMS, TEXT_MAX_CHARS, Codes, IntegerString, ShortText, Text, Uid
from domain.rejection import emptied_status, listed_instances
from domain.study_state import InstanceInfo, PatientInfo, SeriesInfo, StudyHeader, StudyInfo

# 3: request attributes, issuers' universal ids, regions, image lateralities; 4: completed_by; 5: fhir_status
READY_SCHEMA_VERSION = 5
MAX_INSTANCES = 1_000_000
Count = Annotated[int, Meta(ge=0, le=MAX_INSTANCES)]
Revision = Annotated[int, Meta(ge=1, le=2**31 - 1)]


class ReadyInstance(msgspec.Struct, frozen=True, gc=False):
    uid: Uid
    sop_class_uid: Uid
    number: IntegerString | None = None
    title: Annotated[str, Meta(max_length=TEXT_MAX_CHARS)] = ""


class ReadySeries(msgspec.Struct, frozen=True, gc=False):
    uid: Uid
    number: IntegerString | None = None
    modality: ShortText = ""
    description: Text = ""
    date: ShortText = ""
    time: ShortText = ""
    body_part: Text = ""
    laterality: ShortText = ""
    performing_physician: Text = ""
    operators_name: Text = ""
    manufacturer: Text = ""
    model: Text = ""
    institution: Text = ""
    number_of_instances: Count = 0
    instances: Annotated[tuple[ReadyInstance, ...], Meta(max_length=MAX_INSTANCES)] = ()
    anatomic_regions: Codes = ()
    image_lateralities: Annotated[tuple[ShortText, ...], Meta(max_length=CODES_MAX_ITEMS)] = ()


class StudyReady(msgspec.Struct, frozen=True, gc=False):
    """One revision of a complete study."""

    study_uid: Uid
    revision: Revision
    study: StudyInfo
    patient: PatientInfo
    series: Annotated[tuple[ReadySeries, ...], Meta(max_length=MAX_INSTANCES)]
    generation: Revision = 1
    number_of_series: Count = 0
    number_of_instances: Count = 0
    modalities: Annotated[tuple[ShortText, ...], Meta(max_length=CODES_MAX_ITEMS)] = ()
    first_received: ShortText = ""
    last_received: ShortText = ""
    ready_at: ShortText = ""
    # The signal that completed the revision (domain.completeness.CompletedBy: quiet_period, commitment,
    # resolution, ...); text, not an enum, so a newer aggregator's signal never makes an older uploader
    # refuse the record. Empty: a record of schema 3, or a revision sealed before it was recorded.
    completed_by: ShortText = ""
    schema_version: Annotated[int, Meta(ge=1, le=1000)] = READY_SCHEMA_VERSION
    # Early registration (fhir_early_registration): what is known of the study's first revision while it
    # is still receiving, written to FHIR with status ``registered``; the complete revision replaces it.
    registration: bool = False
    # The ImagingStudy status when it is not what the record's kind says (``available``, or ``registered``
    # for a registration): ``entered-in-error`` or ``cancelled`` for a study whose every instance a
    # rejection note removed (domain.rejection). Written to the server as it is: only these values decode.
    fhir_status: Literal["", "entered-in-error", "cancelled"] = ""

    @property
    def version(self) -> tuple[int, int]:
        """(generation, revision): what orders two revisions of one study. A registration is revision 0:
        below the first complete revision, so it never replaces one on the server, whatever the order."""
        return (self.generation, 0 if self.registration else self.revision)


def _number_then_uid(number: int | None, uid: str) -> tuple[int, int, str]:
    return (0 if number is not None else 1, number or 0, uid)


def _ready_series(info: SeriesInfo, instances: list[ReadyInstance]) -> ReadySeries:
    ordered = tuple(sorted(instances, key=lambda i: _number_then_uid(i.number, i.uid)))
    return ReadySeries(
        uid=info.uid,
        number=info.number,
        modality=info.modality,
        description=info.description,
        date=info.date,
        time=info.time,
        body_part=info.body_part,
        laterality=info.laterality,
        performing_physician=info.performing_physician,
        operators_name=info.operators_name,
        manufacturer=info.manufacturer,
        model=info.model,
        institution=info.institution,
        number_of_instances=len(ordered),
        instances=ordered,
        anatomic_regions=info.anatomic_regions,
        image_lateralities=info.image_lateralities,
    )


def build_study_ready(
    header: StudyHeader,
    series: Iterable[SeriesInfo],
    instances: Iterable[InstanceInfo],
    ready_at: str,
    generation: int = 1,
    registration: bool = False,
) -> StudyReady:
    """The ready record for the header's current revision; counts come from the instances themselves.

    Instances that joined a later revision are left out (a sealed revision is rebuilt the same after a
    restart), and so are instances rejected by then (and the rejection notes themselves) and series
    without an instance. Series and instances are ordered by number, then UID, so two builds of one
    revision are identical.
    """
    listed, rejection_codes = listed_instances(instances, header.revision)
    by_series: defaultdict[str, list[ReadyInstance]] = defaultdict(list)
    for inst in listed:
        by_series[inst.series_uid].append(ReadyInstance(inst.uid, inst.sop_class_uid, inst.number, inst.title))
    known = {s.uid: s for s in series}
    ready_series = sorted(
        (_ready_series(known.get(uid, SeriesInfo(uid=uid)), items) for uid, items in by_series.items()),
        key=lambda s: _number_then_uid(s.number, s.uid),
    )
    return StudyReady(
        study_uid=header.study.uid,
        revision=header.revision,
        generation=generation,
        study=header.study,
        patient=header.patient,
        series=tuple(ready_series),
        number_of_series=len(ready_series),
        number_of_instances=sum(s.number_of_instances for s in ready_series),
        modalities=tuple(dict.fromkeys(s.modality for s in ready_series if s.modality)),
        first_received=header.first_received,
        last_received=header.last_received,
        ready_at=ready_at,
        completed_by=header.completed_by.value,
        registration=registration,
        fhir_status=emptied_status(rejection_codes) if rejection_codes and not ready_series else "",
    )


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(StudyReady)


def encode_study_ready(record: StudyReady) -> bytes:
    """JSON bytes: study/patient/revision/counts at the top, series with their instances nested."""
    return _encoder.encode(record)


def decode_study_ready(raw: bytes | str | None) -> StudyReady:
    """Parse and validate one ``imaging.study.ready`` value; raise :class:`InvalidRecordError` on any defect."""
    if raw is None or raw == b"":
        raise InvalidRecordError("empty message", reason="empty")
    try:
        record = _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise InvalidRecordError(f"study-ready record: {exc}", reason="invalid_field") from None
    except msgspec.DecodeError as exc:
        raise InvalidRecordError(f"study-ready record: not JSON ({exc})", reason="not_json") from None
    if record.study.uid != record.study_uid:
        raise InvalidRecordError("study.uid differs from study_uid", reason="inconsistent")
    if any(s.number_of_instances != len(s.instances) for s in record.series):
        raise InvalidRecordError("a series' number_of_instances does not match its instances", reason="inconsistent")
    if record.number_of_instances != sum(len(s.instances) for s in record.series):
        raise InvalidRecordError("number_of_instances does not match the instances listed", reason="inconsistent")
    if record.number_of_series != len(record.series):
        raise InvalidRecordError("number_of_series does not match the series listed", reason="inconsistent")
    return record
