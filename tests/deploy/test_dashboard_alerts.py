"""The Grafana dashboard and the Prometheus alerts as files: the panels the issue names, a datasource
variable, and alerts that each wait (`for:`), carry a severity and tell the operator what to do."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.deploy.test_metrics_exist import ALERTS, DASHBOARD

README_SECTIONS = ("Receiver", "Failure handling", "Replay", "Running in production")


def test_dashboard_has_a_prometheus_datasource_variable_used_by_every_panel() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" and t["expr"].strip() for t in panel["targets"])
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys()


@pytest.mark.parametrize(
    ("title_words", "metric"),
    [
        ("instances received", "studystream_receiver_instances_stored_total"),
        ("publish latency", "studystream_receiver_publish_latency_seconds_bucket"),
        ("outbox depth", "studystream_receiver_outbox_depth"),
        ("studies by status", "studystream_web_studies"),
        ("last instance to fhir", "studystream_study_fhir_delay_seconds_bucket"),
        ("upload attempts and failures", "studystream_uploader_attempts_total"),
        ("consumer lag", "studystream_consumer_lag"),
    ],
)
def test_dashboard_has_the_panel(title_words: str, metric: str) -> None:
    panels = [p for p in json.loads(DASHBOARD.read_text())["panels"] if title_words in p["title"].lower()]
    assert len(panels) == 1, f"no single panel titled like {title_words!r}"
    assert any(re.search(rf"\b{metric}\b", t["expr"]) for t in panels[0]["targets"])


def _rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def test_every_alert_waits_has_a_severity_and_says_what_to_do() -> None:
    rules = _rules()
    assert len({r["alert"] for r in rules}) == len(rules)
    for rule in rules:
        assert re.fullmatch(r"\d+[smh]", str(rule["for"])), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        description = rule["annotations"]["description"]
        # An action (a command, a setting, a README section), not only a statement of the problem.
        assert re.search(r"`studystream |STUDYSTREAM_|README|kubectl|Check ", description), rule["alert"]


@pytest.mark.parametrize(
    ("topic", "metric"),
    [
        ("stuck studies", "studystream_web_studies"),
        ("DLQ growth", "studystream_dead_letters_total"),
        ("outbox depth", "studystream_receiver_outbox_depth"),
        ("consumer lag", "studystream_consumer_lag"),
        ("FHIR failures", "studystream_uploader_attempts_total"),
        ("receiver down", "up"),
    ],
)
def test_alerts_cover(topic: str, metric: str) -> None:
    assert any(re.search(rf"(?<![\w:]){metric}(?![\w:])", str(r["expr"])) for r in _rules()), topic


def test_readme_sections_named_by_the_alerts_exist_or_are_the_new_one() -> None:
    from tests.conftest import ROOT

    headings = set(re.findall(r"^## (.+)$", (ROOT / "README.md").read_text(), re.MULTILINE))
    text = ALERTS.read_text()
    named = {s for s in README_SECTIONS if s in text}
    assert named, "the alerts point at no README section"
    # "Running in production" is added with this change; the others must already be there.
    assert named - {"Running in production"} <= headings
