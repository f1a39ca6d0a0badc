"""The web view's HTML pages, from the rows of :mod:`web.render` (pure: strings in, a page out).

Every value is escaped. Pages refresh themselves with ``<meta http-equiv="refresh">`` so they work
without JavaScript and keep the browser's credentials (basic auth or a header set by a proxy).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any
from urllib.parse import quote

from domain.completeness import format_quiet
from web.render import STATUSES

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.2rem;color:#1d2430;background:#f7f8fa}
h1{font-size:1.4rem;margin:0 0 .3rem}h2{font-size:1.1rem;margin:1.2rem 0 .4rem}
.meta{color:#5b6472;font-size:.85rem;margin-bottom:.8rem}
nav a{margin-right:.6rem;padding:.15rem .5rem;border-radius:.8rem;background:#e4e8ee;color:#1d2430;
text-decoration:none;font-size:.85rem}nav a.on{background:#1d2430;color:#fff}
table{border-collapse:collapse;width:100%;background:#fff;font-size:.85rem}
th,td{border-bottom:1px solid #e4e8ee;padding:.35rem .5rem;text-align:left;vertical-align:top}
th{background:#eef1f5;font-weight:600}td.num{text-align:right}code{font-size:.8rem}
.st{padding:.1rem .45rem;border-radius:.6rem;font-weight:600;font-size:.8rem}
.st-receiving{background:#fff3cd;color:#7a5a00}.st-ready{background:#d8ecff;color:#0b4f8a}
.st-published{background:#d7f5dd;color:#17692b}.st-failed{background:#fde0e0;color:#9b1c1c}
.st-conflict{background:#f3d9fa;color:#6a1b7a}
.hidden{color:#8a93a0;font-style:italic}.t{white-space:nowrap}.warn{color:#9b1c1c}
dl{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem;background:#fff;padding:.6rem}
dt{font-weight:600}dd{margin:0}
"""


def duration(seconds: float | None) -> str:
    """``95`` → ``1m 35s``; ``None`` → empty."""
    if seconds is None:
        return ""
    total = round(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def quiet_cell(remaining: float | None) -> str:
    """The quiet-period countdown, rounded up so it never shows "0s left" while still waiting."""
    if remaining is None:
        return ""
    return "due" if remaining <= 0 else f"{duration(math.ceil(remaining))} left"


def short_time(iso: str) -> str:
    """``2026-11-28T08:36:23.902Z`` → ``2026-11-28 08:36:23`` (UTC, as stored)."""
    return iso[:19].replace("T", " ") if iso else ""


def time_cell(iso: str) -> str:
    return f'<span class=t title="{escape(iso)}">{escape(short_time(iso))}</span>'


def _page(title: str, body: str, refresh_seconds: int) -> str:
    refresh = f'<meta http-equiv="refresh" content="{refresh_seconds}">' if refresh_seconds > 0 else ""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">{refresh}'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>{body}</body></html>"
    )


def status_badge(status: str) -> str:
    return f'<span class="st st-{escape(status)}" data-status="{escape(status)}">{escape(status)}</span>'


def fhir_cell(fhir: Mapping[str, Any] | None) -> str:
    if not fhir:
        return ""
    parts = [escape(fhir["status"])]
    if fhir.get("url"):
        parts.append(f'<a href="{escape(fhir["url"])}" target="_blank" rel="noopener">ImagingStudy</a>')
    if fhir.get("http_status"):
        parts.append(f"HTTP {int(fhir['http_status'])}")
    if fhir.get("reason") and fhir["status"] != "published":
        parts.append(f'<span class="warn">{escape(fhir["reason"][:200])}</span>')
    if fhir.get("next_attempt_at"):
        parts.append(f"next {escape(fhir['next_attempt_at'])}")
    return " · ".join(parts)


def patient_cell(patient: Mapping[str, str] | None) -> str:
    if patient is None:
        return '<span class="hidden">hidden</span>'
    ident = f"{patient['id']}" + (f" ({patient['issuer']})" if patient.get("issuer") else "")
    return f"{escape(patient['name'])}<br><code>{escape(ident)}</code>"


def study_href(uid: str) -> str:
    return f"/studies/{quote(uid)}"


def index_page(
    rows: Sequence[Mapping[str, Any]],
    counts: Mapping[str, int],
    status: str | None,
    errors: Sequence[str],
    refresh_seconds: int,
    generated_at: str,
    outage: Mapping[str, Any] | None = None,
) -> str:
    """The study list: filters by status, one line per study; a banner while uploads are parked."""
    links = [f'<a href="/" class="{"on" if status is None else ""}">all ({sum(counts.values())})</a>']
    for name in STATUSES:
        cls = "on" if status == name else ""
        links.append(f'<a href="/?status={name}" class="{cls}">{name} ({counts.get(name, 0)})</a>')
    head = (
        "<tr><th>Study</th><th>Status</th><th>Rev</th><th>Series</th><th>Instances</th><th>Modalities</th>"
        "<th>Accession</th><th>Patient</th><th>First received</th><th>Last received</th><th>Age</th>"
        "<th>Quiet period</th><th>Completed by</th><th>FHIR</th></tr>"
    )
    lines = []
    for r in rows:
        quiet = quiet_cell(r["quiet_remaining_seconds"])
        lines.append(
            f'<tr data-study-uid="{escape(r["study_uid"])}">'
            f'<td><a href="{study_href(r["study_uid"])}"><code>{escape(r["study_uid"])}</code></a>'
            f"<br>{escape(r['description'])}</td>"
            f"<td>{status_badge(r['status'])}</td><td class=num>{int(r['revision'])}</td>"
            f"<td class=num>{int(r['series_count'])}</td><td class=num>{int(r['instance_count'])}</td>"
            f"<td>{escape(', '.join(r['modalities']))}</td><td>{escape(r['accession_number'])}</td>"
            f"<td>{patient_cell(r['patient'])}</td>"
            f"<td>{time_cell(r['first_received'])}</td><td>{time_cell(r['last_received'])}</td>"
            f"<td>{duration(r['age_seconds'])}</td><td>{quiet}</td><td>{escape(r['completed_by'] or '')}</td>"
            f"<td>{fhir_cell(r['fhir'])}</td></tr>"
        )
    empty = '<tr><td colspan="14" class="hidden">no studies</td></tr>' if not rows else ""
    warnings = "".join(f'<p class="warn">{escape(e)}</p>' for e in errors)
    if outage and outage.get("parked"):
        warnings += (
            f'<p class="warn" id="upload-outage">FHIR uploads parked on this worker: {int(outage["parked"])}, '
            f"the oldest for {duration(outage.get('oldest_parked_seconds'))} (retried until the server takes them)</p>"
        )
    body = (
        f"<h1>StudyStream studies</h1><div class=meta>generated {escape(generated_at)}"
        f"{f' · refreshes every {refresh_seconds} s' if refresh_seconds > 0 else ''}"
        f' · <a href="/api/studies">JSON</a> · <a href="/api/dlq">dead letters</a></div>'
        f"<nav>{''.join(links)}</nav>{warnings}<h2>Studies</h2>"
        f'<table id="studies"><thead>{head}</thead><tbody>{"".join(lines)}{empty}</tbody></table>'
    )
    return _page("StudyStream studies", body, refresh_seconds)


def identities_cell(patients: list[Mapping[str, Any]], study_uid: str) -> str:
    """The study's patient identities by key; more than one is a conflict, with the command that decides it."""
    if not patients:
        return ""
    items = []
    for p in patients:
        shown = " ".join(escape(str(p[k])) for k in ("name", "id", "issuer") if p.get(k))
        mark = " (filed under)" if p.get("current") else ""
        items.append(f"<li><code>{escape(p['key'])}</code>: {int(p['instances'])} instance(s){mark} {shown}</li>")
    hint = ""
    if len(patients) > 1:
        hint = (
            '<p class="warn">Instances of more than one patient: not uploaded. Fix them at the source and '
            f"send again, or decide: <code>studystream resolve {escape(study_uid)} --patient &lt;key&gt;</code></p>"
        )
    return f"<ul>{''.join(items)}</ul>{hint}"


def mpps_cell(mpps: Mapping[str, Any] | None) -> str:
    """The study's latest performed procedure step: its status, a discontinuation's reason."""
    if not mpps:
        return ""
    text = f"{escape(mpps['status'])} <code>{escape(mpps['uid'])}</code>"
    reason = mpps.get("reason")
    if reason:
        text += " · reason: " + escape(" ".join(x for x in (reason["code"], reason["meaning"]) if x) or "(none given)")
    if mpps.get("waiting_for_instances"):
        text += f" · waiting for {int(mpps['waiting_for_instances'])} instance(s)"
    return text


def completeness_cell(completeness: Mapping[str, Any]) -> str:
    """The study's quiet period, the signals its sources are trusted for, and the sources themselves."""
    sources = ", ".join(
        " ".join(x for x in (s["calling_ae"] or "(no AE)", s["modality"]) if x) for s in completeness["sources"]
    )
    more = " and more" if completeness["sources_truncated"] else ""
    trusted = ", ".join(completeness["trusted_signals"]) or "none"
    return (
        f"quiet period {format_quiet(completeness['quiet_period_seconds'])} · trusted: {escape(trusted)}"
        f" · sources: {escape(sources or 'none recorded')}{more}"
    )


def detail_page(study: Mapping[str, Any], refresh_seconds: int) -> str:
    """One study: attributes, FHIR outcome, series, instances."""
    facts = [
        ("Study Instance UID", f"<code>{escape(study['study_uid'])}</code>"),
        ("Status", status_badge(study["status"]) + (f" {escape(study['failure'])}" if study["failure"] else "")),
        ("Revision", f"{int(study['revision'])} (published: {int(study['published_revision'])})"),
        ("Description", escape(study["description"])),
        ("Study date", escape(study["study"]["date"])),
        ("Accession number", escape(study["accession_number"])),
        ("Institution", escape(study["study"]["institution"])),
        ("Patient", patient_cell(study["patient"])),
        ("Patient identities", identities_cell(study["patients"], study["study_uid"])),
        ("Modalities", escape(", ".join(study["modalities"]))),
        ("Series / instances", f"{int(study['series_count'])} / {int(study['instance_count'])}"),
        ("First received", escape(study["first_received"])),
        ("Last received", escape(study["last_received"])),
        ("Age", duration(study["age_seconds"])),
        ("Quiet period", quiet_cell(study["quiet_remaining_seconds"])),
        ("Completed by", escape(study["completed_by"] or "")),
        ("Completeness", completeness_cell(study["completeness"])),
        ("MPPS", mpps_cell(study.get("mpps"))),
        ("FHIR", fhir_cell(study["fhir"])),
    ]
    dl = "".join(f"<dt>{escape(k)}</dt><dd>{v}</dd>" for k, v in facts)
    series = "".join(
        f"<tr><td class=num>{escape(str(s['number'] if s['number'] is not None else ''))}</td>"
        f"<td><code>{escape(s['series_uid'])}</code></td><td>{escape(s['modality'])}</td>"
        f"<td>{escape(s['description'])}</td><td>{escape(s['body_part'])}</td>"
        f"<td>{escape(' '.join(x for x in (s['manufacturer'], s['model']) if x))}</td>"
        f"<td class=num>{int(s['instance_count'])}</td></tr>"
        for s in study["series"]
    )
    instances = "".join(
        f"<tr><td><code>{escape(i['series_uid'])}</code></td>"
        f"<td class=num>{escape(str(i['number'] if i['number'] is not None else ''))}</td>"
        f"<td><code>{escape(i['sop_instance_uid'])}</code></td><td><code>{escape(i['sop_class_uid'])}</code></td></tr>"
        for i in study["instances"]
    )
    truncated = '<p class="warn">instance list truncated</p>' if study["instances_truncated"] else ""
    api = f"/api/studies/{quote(study['study_uid'])}"
    body = (
        f'<div class=meta><a href="/">← all studies</a> · <a href="{api}">JSON</a></div>'
        f"<h1>Study {escape(study['study_uid'])}</h1><dl>{dl}</dl>"
        "<h2>Series</h2><table id=series><thead><tr><th>#</th><th>Series UID</th><th>Modality</th>"
        f"<th>Description</th><th>Body part</th><th>Equipment</th><th>Instances</th></tr></thead><tbody>{series}"
        "</tbody></table><h2>Instances</h2><table id=instances><thead><tr><th>Series UID</th><th>#</th>"
        f"<th>SOP Instance UID</th><th>SOP Class UID</th></tr></thead><tbody>{instances}</tbody></table>{truncated}"
    )
    return _page(f"Study {study['study_uid']}", body, refresh_seconds)


def message_page(title: str, message: str) -> str:
    return _page(
        title, f'<div class=meta><a href="/">← all studies</a></div><h1>{escape(title)}</h1><p>{escape(message)}</p>', 0
    )
