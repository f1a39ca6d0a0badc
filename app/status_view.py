"""How ``studystream status`` shows a :class:`domain.health.Snapshot`: a rich screen, or one JSON document.

Every foreign string arrives here already cleaned (:mod:`domain.health_decode`); it is still put on
the screen as plain :class:`rich.text.Text`, never parsed as rich markup.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from domain.health import STUDY_STATUSES, Lag, Level, Snapshot, Verdict, WorkerMember
from domain.study_state import iso_utc

STYLE = {Level.HEALTHY: "green", Level.DEGRADED: "yellow", Level.DOWN: "bold red"}
STATE = {Level.HEALTHY: "ok", Level.DEGRADED: "degraded", Level.DOWN: "down"}
SHOWN_PARTITIONS = 16  # per topic on the screen; --json lists every one


def _lag_document(lag: Lag | None) -> dict[str, Any] | None:
    if lag is None:
        return None
    return {
        "total": sum(p.lag for p in lag.partitions),
        "by_topic": lag.by_topic(),
        "partitions": [{**dataclasses.asdict(p), "lag": p.lag} for p in lag.partitions],
        "error": lag.error,
    }


def document(snapshot: Snapshot, verdict: Verdict, now: float) -> str:
    """The ``--json`` document: the verdict, each finding, and everything seen."""
    group = snapshot.group
    doc = {
        "status": verdict.level.word,
        "exit_status": int(verdict.level),
        "checked_at": iso_utc(now),
        "findings": [{"component": f.component, "level": f.level.word, "message": f.message} for f in verdict.findings],
        "broker": dataclasses.asdict(snapshot.broker),
        "fhir": dataclasses.asdict(snapshot.fhir),
        "receivers": [dataclasses.asdict(r) for r in snapshot.receivers],
        "workers": None
        if group is None
        else {
            "group_id": group.group_id,
            "state": group.state,
            "count": len(group.members),
            "members": [_member_document(m) for m in group.members],
            "error": group.error,
        },
        "lag": _lag_document(snapshot.lag),
        "studies": None if snapshot.studies is None else dataclasses.asdict(snapshot.studies),
        "dead_letters": None if snapshot.dead_letters is None else dataclasses.asdict(snapshot.dead_letters),
    }
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()


def _member_document(member: WorkerMember) -> dict[str, Any]:
    partitions = None if member.partitions is None else {t: list(p) for t, p in sorted(member.partitions.items())}
    return {**dataclasses.asdict(member), "partitions": partitions}


# --- the screen -------------------------------------------------------------------------------------


def _state(verdict: Verdict, component: str) -> Text:
    level = verdict.of(component)
    return Text(STATE[level], style=STYLE[level])


def _summary(snapshot: Snapshot, verdict: Verdict) -> Table:
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    table.add_column("component")
    table.add_column("state")
    table.add_column("detail", overflow="fold")
    for service in (snapshot.broker, snapshot.fhir):
        table.add_row(service.name, _state(verdict, service.name), Text(f"{service.target} · {service.detail}"))
    for r in snapshot.receivers:
        if r.readable:
            detail = f"outbox {r.outbox_depth} · quarantine {r.quarantine_depth} · associations {r.associations}"
            detail += "" if r.broker_connected else " · no broker connection"
        else:
            detail = r.error or f"HTTP {r.http_status}"
        table.add_row("receiver", _state(verdict, "receivers"), Text(f"{r.url} · {detail}"))
    if not snapshot.receivers:
        table.add_row("receiver", Text("-"), Text("none configured (STUDYSTREAM_STATUS_RECEIVER_URLS)"))
    group = snapshot.group
    if group is not None:
        detail = group.error or f"{len(group.members)} in group {group.group_id} ({group.state})"
        table.add_row("workers", _state(verdict, "workers"), Text(detail))
    if snapshot.lag is not None:
        totals = snapshot.lag.by_topic()
        detail = snapshot.lag.error or f"{sum(totals.values())} records behind over {len(totals)} topics"
        table.add_row("lag", _state(verdict, "lag"), Text(detail))
    _studies_rows(table, snapshot, verdict)
    return table


def _studies_rows(table: Table, snapshot: Snapshot, verdict: Verdict) -> None:
    studies, dlq = snapshot.studies, snapshot.dead_letters
    if studies is not None:
        if studies.error:
            detail = studies.error
        else:
            counts = " · ".join(f"{s} {studies.count(s)}" for s in STUDY_STATUSES)
            detail = f"{counts} · parked {studies.parked}"
            detail += f" (oldest {studies.oldest_parked_seconds:.0f} s)" if studies.parked else ""
            detail += "" if studies.complete else " · incomplete"
        table.add_row("studies", _state(verdict, "studies"), Text(detail))
    if dlq is not None:
        detail = dlq.error or f"{dlq.count} in the last {dlq.window_seconds:.0f} s ({dlq.topic})"
        table.add_row("dead letters", _state(verdict, "dead letters"), Text(detail))


def _ranges(partitions: tuple[int, ...]) -> str:
    """``0-3,6``: partitions as ranges."""
    parts: list[str] = []
    for p in partitions:
        if parts and parts[-1].split("-")[-1] == str(p - 1):
            parts[-1] = f"{parts[-1].split('-')[0]}-{p}"
        else:
            parts.append(str(p))
    return ",".join(parts)


def _workers_table(snapshot: Snapshot, inputs: set[str]) -> Table | None:
    group = snapshot.group
    if group is None or not group.members:
        return None
    table = Table(title="workers", title_justify="left", box=None, header_style="bold", pad_edge=False)
    for column in ("client id", "host", "web", "state", "input partitions"):
        table.add_column(column, overflow="fold")
    for m in group.members:
        if m.partitions is None:
            assigned = "unreadable assignment"
        else:
            assigned = " ".join(f"{t}[{_ranges(p)}]" for t, p in sorted(m.partitions.items()) if t in inputs and p)
        table.add_row(*(Text(v) for v in (m.client_id, m.host, m.url or "?", m.state or "?", assigned or "none")))
    return table


def _lag_table(lag: Lag | None) -> Table | None:
    if lag is None or not lag.partitions:
        return None
    table = Table(title="lag (partition:records behind)", title_justify="left", box=None, header_style="bold")
    table.add_column("topic")
    table.add_column("total", justify="right")
    table.add_column("partitions", overflow="fold")
    for topic, total in sorted(lag.by_topic().items()):
        ps = [p for p in lag.partitions if p.topic == topic]
        shown = " ".join(f"{p.partition}:{p.lag}" for p in ps[:SHOWN_PARTITIONS])
        shown += f" … (+{len(ps) - SHOWN_PARTITIONS})" if len(ps) > SHOWN_PARTITIONS else ""
        table.add_row(Text(topic), Text(str(total)), Text(shown))
    return table


def render(snapshot: Snapshot, verdict: Verdict, now: float, console: Console | None = None) -> None:
    """The one screen: summary, workers, lag, what needs a look."""
    console = console or Console()
    level = verdict.level
    title = Text.assemble("StudyStream ", (level.word.upper(), STYLE[level]), f"  (exit {int(level)})  {iso_utc(now)}")
    inputs = {p.topic for p in snapshot.lag.partitions} if snapshot.lag is not None else set()
    parts: list[Any] = [_summary(snapshot, verdict)]
    parts += [t for t in (_workers_table(snapshot, inputs), _lag_table(snapshot.lag)) if t is not None]
    if snapshot.studies is not None and snapshot.studies.failed_uids:
        parts.append(Text("failed or conflicting: " + " ".join(snapshot.studies.failed_uids)))
    for finding in verdict.findings:
        parts.append(Text.assemble(("• ", STYLE[finding.level]), finding.message))
    console.print(Panel(Group(*parts), title=title, title_align="left"))
