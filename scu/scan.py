"""Find the DICOM files under some paths, group them by study, and plan the associations that send them.

Reading a file here means reading its File Meta Information and the few header elements that decide
where it goes; pixel data is never read. Everything after :func:`scan` works on the resulting values
and touches no file or network.

Presentation contexts come from the files themselves: one context per (SOP Class, Transfer Syntax)
present in a study, each proposing exactly that one transfer syntax, because a file is sent as it is on
disk and so needs an exact match. DICOM allows at most 128 contexts per association (context ids are the
odd numbers 1..255), so a study needing more is split across several associations.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from scu.header import read_header

ContextKey = tuple[str, str]
"""(SOP Class UID, Transfer Syntax UID) of one presentation context."""

MAX_CONTEXTS_PER_ASSOCIATION = 128
UNKNOWN_STUDY = "(no StudyInstanceUID)"

_HEADER_TAGS = ("StudyInstanceUID",)


@dataclass(frozen=True, slots=True)
class InstanceFile:
    """One DICOM file that can be sent as it is on disk."""

    path: Path
    study_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    size: int

    @property
    def context_key(self) -> ContextKey:
        return (self.sop_class_uid, self.transfer_syntax_uid)


@dataclass(frozen=True, slots=True)
class SkippedFile:
    """A file that is not sent, and why."""

    path: Path
    reason: str


@dataclass(slots=True)
class ScanResult:
    instances: list[InstanceFile] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class StudyBatch:
    """The instances of one study, in the order they were found."""

    study_uid: str
    instances: tuple[InstanceFile, ...]

    @property
    def size(self) -> int:
        return sum(instance.size for instance in self.instances)


@dataclass(frozen=True, slots=True)
class AssociationPlan:
    """What one association proposes and sends."""

    study_uid: str
    contexts: tuple[ContextKey, ...]
    instances: tuple[InstanceFile, ...]


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Every regular file named or found under a named folder (recursively, sorted, any file name)."""
    for path in paths:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    yield Path(root) / name
        elif path.is_file():
            yield path


def read_instance(path: Path) -> InstanceFile | SkippedFile:
    """What the sender needs to know about one file, or why it cannot send it."""
    try:
        fast = read_header(path)
    except OSError as exc:
        return SkippedFile(path, f"unreadable: {type(exc).__name__}")
    if fast is not None:
        sop_class, sop_instance, transfer_syntax, study_uid = fast
        return InstanceFile(
            path, study_uid or UNKNOWN_STUDY, sop_class, sop_instance, transfer_syntax, path.stat().st_size
        )
    return _read_with_pydicom(path)


def _read_with_pydicom(path: Path) -> InstanceFile | SkippedFile:
    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=list(_HEADER_TAGS))
    except InvalidDicomError:
        return SkippedFile(path, "not a DICOM file (no DICM prefix and File Meta Information)")
    except (OSError, ValueError, EOFError, KeyError, TypeError) as exc:
        return SkippedFile(path, f"unreadable: {type(exc).__name__}")
    meta = ds.file_meta
    sop_class = str(meta.get("MediaStorageSOPClassUID", "") or "")
    sop_instance = str(meta.get("MediaStorageSOPInstanceUID", "") or "")
    transfer_syntax = str(meta.get("TransferSyntaxUID", "") or "")
    if not (sop_class and sop_instance and transfer_syntax):
        # Without these the file cannot be sent as-is: the context and the C-STORE identify it by them.
        return SkippedFile(path, "no File Meta Information (SOP Class, SOP Instance, Transfer Syntax)")
    return InstanceFile(
        path=path,
        study_uid=str(ds.get("StudyInstanceUID", "") or "") or UNKNOWN_STUDY,
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        transfer_syntax_uid=transfer_syntax,
        size=path.stat().st_size,
    )


def scan(paths: Iterable[Path]) -> ScanResult:
    """Read every file under ``paths``; non-DICOM files are skipped and listed, never fatal."""
    result = ScanResult()
    for path in iter_files(paths):
        item = read_instance(path)
        if isinstance(item, InstanceFile):
            result.instances.append(item)
        else:
            result.skipped.append(item)
    return result


def group_by_study(instances: Iterable[InstanceFile]) -> list[StudyBatch]:
    """Instances grouped by StudyInstanceUID; studies and instances keep the order they were found in."""
    groups: dict[str, list[InstanceFile]] = {}
    for instance in instances:
        groups.setdefault(instance.study_uid, []).append(instance)
    return [StudyBatch(uid, tuple(items)) for uid, items in groups.items()]


def context_keys(instances: Iterable[InstanceFile]) -> list[ContextKey]:
    """The distinct (SOP Class, Transfer Syntax) pairs of ``instances``, in first-seen order."""
    return list(dict.fromkeys(instance.context_key for instance in instances))


def plan_associations(study: StudyBatch, max_contexts: int = MAX_CONTEXTS_PER_ASSOCIATION) -> list[AssociationPlan]:
    """Split a study into associations of at most ``max_contexts`` presentation contexts each."""
    if not 1 <= max_contexts <= MAX_CONTEXTS_PER_ASSOCIATION:
        raise ValueError(f"max_contexts must be 1..{MAX_CONTEXTS_PER_ASSOCIATION}, not {max_contexts}")
    keys = context_keys(study.instances)
    plans: list[AssociationPlan] = []
    for start in range(0, len(keys), max_contexts):
        chunk = tuple(keys[start : start + max_contexts])
        wanted = set(chunk)
        members = tuple(instance for instance in study.instances if instance.context_key in wanted)
        plans.append(AssociationPlan(study.study_uid, chunk, members))
    return plans


def total_bytes(instances: Sequence[InstanceFile]) -> int:
    return sum(instance.size for instance in instances)
