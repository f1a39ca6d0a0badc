"""What a send run did, as numbers, a table and JSON. Paths and UIDs only: no patient data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from scu.scan import AssociationPlan, SkippedFile, StudyBatch
from scu.sender import StudyResult

_MAX_STUDY_ROWS = 25
_MAX_LISTED_FILES = 50


@dataclass(frozen=True, slots=True)
class FileProblem:
    path: str
    reason: str


@dataclass(slots=True)
class SendSummary:
    studies: int
    instances: int
    stored: int
    failed: int
    skipped: int
    bytes_sent: int
    seconds: float
    retries: int
    failed_files: list[FileProblem] = field(default_factory=list)
    skipped_files: list[FileProblem] = field(default_factory=list)
    study_results: list[StudyResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True only when there was something to send and every instance was stored."""
        return self.instances > 0 and self.failed == 0

    @property
    def instances_per_second(self) -> float:
        return self.stored / self.seconds if self.seconds > 0 else 0.0

    @property
    def megabytes_per_second(self) -> float:
        return self.bytes_sent / 1e6 / self.seconds if self.seconds > 0 else 0.0


def summarize(results: Sequence[StudyResult], skipped: Sequence[SkippedFile], seconds: float) -> SendSummary:
    outcomes = [outcome for result in results for outcome in result.outcomes]
    return SendSummary(
        studies=len(results),
        instances=len(outcomes),
        stored=sum(1 for o in outcomes if o.stored),
        failed=sum(1 for o in outcomes if not o.stored),
        skipped=len(skipped),
        bytes_sent=sum(o.size for o in outcomes if o.stored),
        seconds=seconds,
        retries=sum(result.retries for result in results),
        failed_files=[FileProblem(o.path, o.reason) for o in outcomes if not o.stored],
        skipped_files=[FileProblem(str(s.path), s.reason) for s in skipped],
        study_results=list(results),
    )


def to_json(summary: SendSummary) -> dict[str, Any]:
    return {
        "ok": summary.ok,
        "studies": summary.studies,
        "instances": summary.instances,
        "stored": summary.stored,
        "failed": summary.failed,
        "skipped": summary.skipped,
        "bytes": summary.bytes_sent,
        "seconds": round(summary.seconds, 3),
        "instances_per_second": round(summary.instances_per_second, 1),
        "megabytes_per_second": round(summary.megabytes_per_second, 2),
        "retries": summary.retries,
        "failed_files": [{"path": f.path, "reason": f.reason} for f in summary.failed_files],
        "skipped_files": [{"path": f.path, "reason": f.reason} for f in summary.skipped_files],
        "per_study": [
            {
                "study_instance_uid": r.study_uid,
                "stored": r.stored,
                "failed": r.failed,
                "associations": r.associations,
                "retries": r.retries,
                "seconds": round(r.seconds, 3),
                "storage_commitment": r.commitment or None,
            }
            for r in summary.study_results
        ],
    }


def render(summary: SendSummary, console: Console) -> None:
    """The end-of-run table: per study (when few), totals, then failed files (and skipped ones)."""
    if 0 < len(summary.study_results) <= _MAX_STUDY_ROWS:
        studies = Table(title="Studies", title_justify="left")
        for column in ("Study Instance UID", "stored", "failed", "assoc.", "seconds", "commitment"):
            studies.add_column(
                column, justify="left" if column[0].isupper() or column == "commitment" else "right", overflow="fold"
            )
        for r in summary.study_results:
            studies.add_row(
                r.study_uid, str(r.stored), str(r.failed), str(r.associations), f"{r.seconds:.2f}", r.commitment
            )
        console.print(studies)
    totals = Table(title="Summary", title_justify="left", show_header=False)
    totals.add_column("what")
    totals.add_column("value", justify="right")
    for what, value in (
        ("studies", f"{summary.studies}"),
        ("instances sent", f"{summary.stored}"),
        ("instances failed", f"{summary.failed}"),
        ("files skipped (not DICOM)", f"{summary.skipped}"),
        ("bytes", f"{summary.bytes_sent:,} ({summary.bytes_sent / 1e6:.1f} MB)"),
        ("time", f"{summary.seconds:.2f} s"),
        ("throughput", f"{summary.instances_per_second:.1f} inst/s, {summary.megabytes_per_second:.1f} MB/s"),
        ("association retries", f"{summary.retries}"),
    ):
        totals.add_row(what, value)
    console.print(totals)
    _list_files(console, "Failed", summary.failed_files)
    _list_files(console, "Skipped", summary.skipped_files)


def _list_files(console: Console, title: str, problems: Sequence[FileProblem]) -> None:
    if not problems:
        return
    console.print(f"{title} files ({len(problems)}):", markup=False)
    for problem in problems[:_MAX_LISTED_FILES]:
        console.print(f"  {problem.path}: {problem.reason}", markup=False, highlight=False, soft_wrap=True)
    if len(problems) > _MAX_LISTED_FILES:
        console.print(f"  ... and {len(problems) - _MAX_LISTED_FILES} more (see --json)", markup=False)


def dry_run_json(
    studies: Sequence[StudyBatch], plans: dict[str, list[AssociationPlan]], skipped: Sequence[SkippedFile]
) -> dict[str, Any]:
    return {
        "studies": [
            {
                "study_instance_uid": study.study_uid,
                "instances": len(study.instances),
                "bytes": study.size,
                "associations": [
                    {"contexts": [list(key) for key in plan.contexts], "instances": len(plan.instances)}
                    for plan in plans[study.study_uid]
                ],
                "files": [str(i.path) for i in study.instances],
            }
            for study in studies
        ],
        "skipped_files": [{"path": str(s.path), "reason": s.reason} for s in skipped],
    }


def render_dry_run(
    studies: Sequence[StudyBatch],
    plans: dict[str, list[AssociationPlan]],
    skipped: Sequence[SkippedFile],
    console: Console,
) -> None:
    table = Table(title="Would send (dry run)", title_justify="left")
    for column in ("Study Instance UID", "instances", "bytes", "associations", "contexts"):
        table.add_column(column, justify="left" if column[0].isupper() else "right")
    for study in studies:
        study_plans = plans[study.study_uid]
        contexts = sum(len(plan.contexts) for plan in study_plans)
        table.add_row(
            study.study_uid, str(len(study.instances)), f"{study.size:,}", str(len(study_plans)), str(contexts)
        )
    console.print(table)
    for study in studies:
        for plan in plans[study.study_uid]:
            for instance in plan.instances:
                console.print(
                    f"{instance.path}  {instance.sop_class_uid}  {instance.transfer_syntax_uid}",
                    markup=False,
                    highlight=False,
                )
    _list_files(console, "Skipped", [FileProblem(str(s.path), s.reason) for s in skipped])
