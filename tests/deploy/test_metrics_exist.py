"""Every metric the Grafana dashboard and the Prometheus alerts name is served by a real receiver or worker.

A receiver (`python -m scp.cli`) and a worker (`studystream worker`) run on this test's own topics and
ports against the local Kafka; their ``/metrics`` pages are read over HTTP.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from app.settings import Settings
from tests.aggregator.conftest import Worker
from tests.conftest import ROOT, create_test_topics, pipeline_settings, wait_for, worker_env
from tests.deploy.promql import FUNCTIONS, references, served_names
from tests.scp.conftest import Receiver

DASHBOARD = ROOT / "deploy" / "grafana" / "studystream.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
WEB_TOKEN = "deploy-test-token"
# Made by Prometheus itself for every scrape target, never on a /metrics page.
PROMETHEUS_MADE = frozenset({"up"})


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def alert_expressions() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [str(rule["expr"]) for group in rules["groups"] for rule in group["rules"]]


def fetch(url: str, token: str | None = None) -> str | None:
    """The page's text, or None while it does not answer 200."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.read().decode() if response.status == 200 else None
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def test_every_dashboard_and_alert_metric_is_served(kafka: Settings, tmp_path: Path) -> None:
    settings = pipeline_settings(kafka, "deploy", tmp_path, web_token=WEB_TOKEN, quiet_period=1.0)
    asyncio.run(create_test_topics(settings))
    receiver = Receiver(root=tmp_path / "receiver", topic=settings.topic_raw, broker_url=settings.broker_url)
    receiver.root.mkdir(parents=True)
    worker = Worker(worker_env(settings), tmp_path, "worker")
    try:
        receiver.start()
        worker.start()
        receiver_text = wait_for(
            lambda: fetch(f"http://127.0.0.1:{receiver.metrics_port}/metrics"), 30, what="the receiver's /metrics"
        )
        worker.wait_started()
        worker_text = wait_for(
            lambda: fetch(f"http://127.0.0.1:{worker.web_port}/metrics", WEB_TOKEN), 60, what="the worker's /metrics"
        )
    finally:
        worker.stop()
        receiver.stop()
    assert isinstance(receiver_text, str) and isinstance(worker_text, str)
    receiver_names, worker_names = served_names(receiver_text), served_names(worker_text)
    # The pages are the ones meant: a receiver's and a worker's own metrics, not an empty or foreign page.
    assert "studystream_receiver_outbox_depth" in receiver_names
    assert "studystream_web_studies" in worker_names
    served = receiver_names | worker_names | PROMETHEUS_MADE

    checked = {"dashboard": dashboard_expressions(), "alerts": alert_expressions()}
    assert all(checked.values()), f"no expression found in {[k for k, v in checked.items() if not v]}"
    missing: list[str] = []
    unknown_functions: list[str] = []
    for source, expressions in checked.items():
        for expr in expressions:
            refs = references(expr)
            assert refs.metrics, f"{source}: {expr!r} names no metric"
            missing.extend(f"{source}: {name} (in {expr!r})" for name in sorted(refs.metrics - served))
            unknown_functions.extend(f"{source}: {f}()" for f in sorted(refs.functions - FUNCTIONS))
    assert not missing, "metrics no receiver or worker serves:\n" + "\n".join(missing)
    assert not unknown_functions, "not PromQL functions:\n" + "\n".join(unknown_functions)
