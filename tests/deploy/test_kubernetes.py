"""deploy/kubernetes/: every manifest valid against the Kubernetes API schema (kubernetes-validate, offline,
strict: unknown fields fail), and consistent with the image, the settings and docker-compose.yml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from app.settings import Settings
from tests.conftest import ROOT

MANIFESTS = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30"  # the oldest release still commonly run; strict schemas of that version


def documents() -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for path in sorted(MANIFESTS.iterdir()):
        if path.suffix in (".yaml", ".yml") or path.name.endswith(".yaml.example"):
            found.extend((path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return found


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in documents() if doc["kind"] == kind}


def test_the_manifests_are_there() -> None:
    kinds = sorted(doc["kind"] for _, doc in documents())
    assert kinds.count("StatefulSet") == 2
    assert {"Namespace", "ConfigMap", "Secret", "Service", "PodDisruptionBudget"} <= set(kinds)


@pytest.mark.parametrize(("path", "doc"), documents(), ids=lambda v: v.name if isinstance(v, Path) else v["kind"])
def test_manifest_is_valid_kubernetes(path: Path, doc: dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{path.name} {doc['kind']}/{doc['metadata']['name']}: {exc.message} at {exc.path}")


def test_validator_rejects_a_broken_manifest() -> None:
    broken = by_kind("StatefulSet")["studystream-worker"]
    broken = yaml.safe_load(yaml.safe_dump(broken))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_configmap_and_secret_hold_only_real_settings() -> None:
    known = {f"STUDYSTREAM_{name.upper()}" for name in Settings.model_fields}
    config = by_kind("ConfigMap")["studystream"]["data"]
    secret = by_kind("Secret")["studystream"]["stringData"]
    assert set(config) <= known, set(config) - known
    assert set(secret) <= known, set(secret) - known
    Settings(**{k.removeprefix("STUDYSTREAM_").lower(): v for k, v in config.items()})  # every value parses
    assert all(value.startswith("REPLACE_WITH_") for value in secret.values()), "placeholders only"
    assert not (MANIFESTS / "secret.yaml").exists(), "the real Secret is created with kubectl, never committed"


def _pod(name: str) -> dict[str, Any]:
    return by_kind("StatefulSet")[name]["spec"]["template"]["spec"]


def test_containers_run_the_compose_commands_as_non_root_with_resources() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name, service in (("studystream-receiver", "receiver"), ("studystream-worker", "worker")):
        pod = _pod(name)
        (container,) = pod["containers"]
        assert container["args"] == compose[service]["command"], name  # the image's entrypoint is `studystream`
        assert "command" not in container
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= container["resources"][kind].keys(), name
        refs = {(kind, ref["name"]) for source in container["envFrom"] for kind, ref in source.items()}
        assert refs == {("configMapRef", "studystream"), ("secretRef", "studystream")}, name


def test_receiver_keeps_storage_and_outbox_on_its_claim_behind_one_service() -> None:
    config = by_kind("ConfigMap")["studystream"]["data"]
    receiver = by_kind("StatefulSet")["studystream-receiver"]
    (container,) = _pod("studystream-receiver")["containers"]
    claims = {c["metadata"]["name"] for c in receiver["spec"]["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts[config["STUDYSTREAM_STORAGE_DIR"]] in claims
    assert mounts[config["STUDYSTREAM_STATE_DIR"]] in claims  # the outbox: <state_dir>/receiver-outbox.sqlite
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "dicom": int(config["STUDYSTREAM_DICOM_PORT"]),
        "metrics": int(config["STUDYSTREAM_RECEIVER_METRICS_PORT"]),
        "dicomweb": int(config["STUDYSTREAM_RECEIVER_DICOMWEB_PORT"]),
    }
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "metrics"}
    services = [
        s for s in by_kind("Service").values() if s["spec"]["selector"] == receiver["spec"]["selector"]["matchLabels"]
    ]
    assert len(services) == 1
    assert {p["targetPort"] for p in services[0]["spec"]["ports"]} == {"dicom", "metrics", "dicomweb"}


def test_workers_keep_rocksdb_on_their_claim_and_stay_within_the_partitions() -> None:
    config = by_kind("ConfigMap")["studystream"]["data"]
    worker = by_kind("StatefulSet")["studystream-worker"]
    assert 1 <= worker["spec"]["replicas"] <= int(config["STUDYSTREAM_TOPIC_PARTITIONS"])
    (container,) = _pod("studystream-worker")["containers"]
    claims = {c["metadata"]["name"] for c in worker["spec"]["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts[config["STUDYSTREAM_STATE_DIR"]] in claims  # tables: <state_dir>/worker-<web port>
    assert config["STUDYSTREAM_BUNDLES_DIR"].startswith(config["STUDYSTREAM_STATE_DIR"] + "/")
    web_port = int(container["args"][container["args"].index("--web-port") + 1])
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"web": web_port}
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "web"}
    headless = by_kind("Service")[worker["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    env = {e["name"]: e.get("value", "") for e in container["env"]}
    assert env["STUDYSTREAM_WEB_HOST"].startswith(f"$(POD_NAME).{headless['metadata']['name']}.")
