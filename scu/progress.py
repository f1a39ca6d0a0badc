"""Progress while sending: a rich progress bar (overall and per study) on a terminal, log lines otherwise.

Both displays are driven by :meth:`on_outcome`, called once per instance in the sending process.
Lines name studies by UID and count instances; never patient data.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from types import TracebackType
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from scu.scan import StudyBatch
from scu.sender import InstanceOutcome


class ProgressDisplay(Protocol):
    def __enter__(self) -> ProgressDisplay: ...

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def on_outcome(self, study_uid: str, outcome: InstanceOutcome) -> None: ...


class _StudyCount:
    __slots__ = ("done", "failed", "started", "total")

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self.started = time.monotonic()


class LogLines:
    """One line per finished study and per failed instance, for logs and pipes."""

    def __init__(self, studies: Sequence[StudyBatch], console: Console) -> None:
        self._console = console
        self._counts = {study.study_uid: _StudyCount(len(study.instances)) for study in studies}
        self._total = sum(len(study.instances) for study in studies)
        self._done = 0

    def __enter__(self) -> LogLines:
        self._say(f"sending {self._total} instance(s) in {len(self._counts)} study(ies)")
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        return None

    def on_outcome(self, study_uid: str, outcome: InstanceOutcome) -> None:
        count = self._counts[study_uid]
        count.done += 1
        self._done += 1
        if not outcome.stored:
            count.failed += 1
            self._say(f"failed {outcome.path}: {outcome.reason}")
        if count.done == count.total:
            seconds = time.monotonic() - count.started
            self._say(
                f"study {study_uid}: {count.done - count.failed}/{count.total} stored, {count.failed} failed "
                f"in {seconds:.2f} s ({self._done}/{self._total} overall)"
            )

    def _say(self, text: str) -> None:
        self._console.print(f"{time.strftime('%H:%M:%S')} {text}", markup=False, highlight=False, soft_wrap=True)


class ProgressBars:
    """An overall bar plus one bar per study in flight (removed when the study is done)."""

    def __init__(self, studies: Sequence[StudyBatch], console: Console) -> None:
        self._counts = {study.study_uid: _StudyCount(len(study.instances)) for study in studies}
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[failed]} failed"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        total = sum(len(study.instances) for study in studies)
        self._overall = self._progress.add_task("all studies", total=total, failed=0)
        self._tasks: dict[str, TaskID] = {}
        self._failed = 0

    def __enter__(self) -> ProgressBars:
        self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._progress.stop()

    def on_outcome(self, study_uid: str, outcome: InstanceOutcome) -> None:
        count = self._counts[study_uid]
        task = self._tasks.get(study_uid)
        if task is None:
            label = f"study …{study_uid[-12:]}"
            task = self._tasks[study_uid] = self._progress.add_task(label, total=count.total, failed=0)
        count.done += 1
        if not outcome.stored:
            count.failed += 1
            self._failed += 1
        self._progress.update(task, advance=1, failed=count.failed)
        self._progress.update(self._overall, advance=1, failed=self._failed)
        if count.done == count.total:
            self._progress.remove_task(task)


def make_display(studies: Sequence[StudyBatch], console: Console, bars: bool | None = None) -> ProgressDisplay:
    """Bars when ``console`` is a terminal (or ``bars`` says so), log lines otherwise."""
    use_bars = console.is_terminal if bars is None else bars
    return ProgressBars(studies, console) if use_bars else LogLines(studies, console)
