"""The web view shows, per study, which signal completed it and what its completeness rules make of it."""

from __future__ import annotations

import dataclasses

from domain.completeness import CompletedBy, CompletenessPolicy, Source, parse_rules
from domain.study_state import StudyStatus
from tests.web.test_web_render import NOW, OPTIONS, header
from web import html, render

RULES = dataclasses.replace(
    OPTIONS, completeness=CompletenessPolicy(parse_rules("modality=CR:quiet=5s; ae=PACS:trust=none"), 30.0)
)


def test_an_open_study_counts_down_its_own_quiet_period_and_lists_its_sources() -> None:
    cr = header(sources=(Source("CR1", "CR"),), last_wall_time=NOW - 2)
    row = render.study_row(cr, None, ["CR"], NOW, RULES)
    assert row["quiet_remaining_seconds"] == 3.0
    assert row["completed_by"] is None
    assert row["completeness"] == {
        "quiet_period_seconds": 5.0,
        "trusted_signals": ["commitment", "mpps", "stow"],
        "sources": [{"calling_ae": "CR1", "modality": "CR"}],
        "sources_truncated": False,
    }
    pacs = render.study_row(header(sources=(Source("CR1", "CR"), Source("PACS", "OT"))), None, [], NOW, RULES)
    assert pacs["completeness"]["trusted_signals"] == [] and pacs["completeness"]["quiet_period_seconds"] == 30.0
    assert render.study_row(cr, None, [], NOW, OPTIONS)["quiet_remaining_seconds"] == 28.0  # no rules: the setting


def test_the_signal_that_completed_the_revision_is_shown_in_the_list_and_the_detail() -> None:
    sealed = header(status=StudyStatus.SEALED, completed_by=CompletedBy.COMMITMENT, sources=(Source("<CT&1>", "CT"),))
    row = render.study_row(sealed, None, ["CT"], NOW, RULES)
    assert row["completed_by"] == "commitment"
    page = html.index_page([row], render.status_counts([row]), None, [], 0, "now")
    assert "<th>Completed by</th>" in page and "<td>commitment</td>" in page
    detail = html.detail_page(render.study_detail(sealed, None, [], [], NOW, RULES, 10), 0)
    assert "<dt>Completed by</dt><dd>commitment</dd>" in detail
    assert "sources: &lt;CT&amp;1&gt; CT" in detail and "<CT&1>" not in detail  # an AE title is escaped
    assert "quiet period 30s · trusted: commitment, mpps, stow" in detail
