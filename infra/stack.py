"""The local stack: a single-node Apache Kafka (KRaft) broker and a HAPI FHIR JPA server, both fetched
from Maven Central with Maven (cached in ~/.m2) and run with the installed Java as detached processes.

Layout under ``STUDYSTREAM_STATE_DIR``::

    stack/kafka/lib-<version>/   broker jars          data/kafka/      KRaft metadata and logs
    stack/kafka/server.properties                     data/hapi/       H2 database
    stack/hapi/<version>/        server jar           logs/<service>.log
                                                      run/<service>.pid

``up`` is idempotent, ``down`` stops exactly what ``up`` started (by pid file) and keeps ``data/``;
``down --purge`` also wipes ``data/`` and ``logs/``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from app.settings import Settings
from domain.errors import StudyStreamError
from infra import processes
from infra.processes import ManagedProcess

INFRA_DIR = Path(__file__).resolve().parent
SERVICES = ("kafka", "fhir")


class StackError(StudyStreamError):
    """The local Kafka/HAPI stack could not be fetched, started, or stopped."""


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    name: str
    pid: int | None  # our process, when we started it and it still runs
    healthy: bool  # the service answers at its address (ours or somebody else's)
    address: str
    log_file: Path


# --- paths -----------------------------------------------------------------------------------------


def _stack_dir(settings: Settings) -> Path:
    return settings.state_dir.resolve() / "stack"


def _data_dir(settings: Settings, service: str) -> Path:
    return settings.state_dir.resolve() / "data" / service


def _log_file(settings: Settings, service: str) -> Path:
    return settings.state_dir.resolve() / "logs" / f"{service}.log"


def _pid_file(settings: Settings, service: str) -> Path:
    return settings.state_dir.resolve() / "run" / f"{service}.pid"


def new_cluster_id() -> str:
    """A random KRaft cluster id (base64url of a UUID, as Kafka's own), never starting with "-".

    One in 64 ids would start with "-"; passed as a separate argument, kafka-storage's parser took it
    for an option and formatting failed ("--cluster-id: expected one argument", seen in a test run).
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _java(java_home: Path | None = None) -> str:
    if java_home is not None:
        return str(java_home / "bin" / "java")
    home = os.environ.get("JAVA_HOME")
    if home and Path(home, "bin", "java").exists():
        return str(Path(home, "bin", "java"))
    found = shutil.which("java")
    if not found:
        raise StackError("no `java` on PATH: install a JDK 17 (make installs openjdk-17-jdk-headless)")
    return found


def _mvn(args: Iterable[str], what: str) -> None:
    mvn = shutil.which("mvn")
    if not mvn:
        raise StackError("no `mvn` on PATH: install Maven (make installs it with apt-get)")
    cmd = [mvn, "-B", "-q", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)  # noqa: S603
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-25:])
        raise StackError(f"Maven could not fetch {what} (exit {result.returncode}):\n{tail}")


# --- Kafka -----------------------------------------------------------------------------------------


def kafka_lib_dir(settings: Settings) -> Path:
    return _stack_dir(settings) / "kafka" / f"lib-{settings.kafka_version}"


def fetch_kafka(settings: Settings) -> Path:
    """Copy the broker jars (from ~/.m2, downloading what is missing) into the stack dir, once."""
    lib = kafka_lib_dir(settings)
    done = lib / ".complete"
    if not done.exists():
        shutil.rmtree(lib, ignore_errors=True)
        _mvn(
            [
                "-f",
                str(INFRA_DIR / "kafka" / "pom.xml"),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={lib}",
                f"-Dkafka.version={settings.kafka_version}",
            ],
            f"Apache Kafka {settings.kafka_version}",
        )
        done.touch()
    return lib


def kafka_server_properties(settings: Settings, log_dir: Path) -> str:
    """The broker's configuration: one node acting as broker and KRaft controller."""
    host, port = settings.bootstrap_servers[0].rsplit(":", 1)
    controller_port = settings.kafka_controller_port
    return "\n".join(
        [
            "# Written by `studystream stack up`; edits are overwritten.",
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@{host}:{controller_port}",
            f"listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}",
            f"advertised.listeners=PLAINTEXT://{host}:{port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={log_dir}",
            f"num.partitions={settings.topic_partitions}",
            "offsets.topic.replication.factor=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            f"message.max.bytes={settings.max_message_bytes}",
            f"replica.fetch.max.bytes={settings.max_message_bytes}",
            "",
        ]
    )


def prepare_kafka(settings: Settings) -> ManagedProcess:
    lib = fetch_kafka(settings)
    conf_dir = _stack_dir(settings) / "kafka"
    data = _data_dir(settings, "kafka")
    data.mkdir(parents=True, exist_ok=True)
    props = conf_dir / "server.properties"
    props.write_text(kafka_server_properties(settings, data))
    java = _java()
    classpath = f"{lib}/*"
    if not (data / "meta.properties").exists():
        format_storage = ["kafka.tools.StorageTool", "format", f"--cluster-id={new_cluster_id()}", "-c", str(props)]
        result = subprocess.run(  # noqa: S603
            [java, "-cp", classpath, *format_storage],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise StackError(f"formatting Kafka storage failed: {result.stdout}{result.stderr}")
    return ManagedProcess(
        name="kafka",
        command=[
            java,
            f"-Xmx{settings.kafka_heap}",
            f"-Xms{settings.kafka_heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={INFRA_DIR / 'kafka' / 'log4j2.yaml'}",
            "-cp",
            classpath,
            "kafka.Kafka",
            str(props),
        ],
        cwd=conf_dir,
        log_file=_log_file(settings, "kafka"),
        pid_file=_pid_file(settings, "kafka"),
        marker=str(props),
    )


def kafka_healthy(settings: Settings, timeout: float = 5.0) -> bool:
    """True when the broker answers a metadata request."""
    from aiokafka.admin import AIOKafkaAdminClient

    async def probe() -> bool:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=settings.bootstrap_servers, request_timeout_ms=int(timeout * 1000)
        )
        try:
            await asyncio.wait_for(admin.start(), timeout)
            await asyncio.wait_for(admin.describe_cluster(), timeout)
            return True
        except Exception:  # noqa: BLE001 - any failure means "not (yet) healthy"
            return False
        finally:
            try:
                await asyncio.wait_for(admin.close(), timeout)
            except Exception:  # noqa: BLE001, S110
                pass

    if not _port_open(*_host_port(settings.bootstrap_servers[0])):
        return False
    return asyncio.run(probe())


# --- HAPI FHIR -------------------------------------------------------------------------------------


def _hapi_sources() -> list[Path]:
    root = INFRA_DIR / "hapi"
    return sorted([root / "pom.xml", root / "application.yaml", *(root / "src").rglob("*.java")])


def hapi_dir(settings: Settings) -> Path:
    """Build directory of the HAPI server jar, named after the HAPI version and a hash of our sources,
    so a change to the launcher or its configuration builds a new jar instead of running a stale one."""
    digest = hashlib.sha256()
    for path in _hapi_sources():
        digest.update(path.read_bytes())
    return _stack_dir(settings) / "hapi" / f"{settings.hapi_version}-{digest.hexdigest()[:10]}"


def hapi_jar(settings: Settings) -> Path:
    return hapi_dir(settings) / "studystream-hapi.jar"


def fetch_hapi(settings: Settings) -> Path:
    """Build the HAPI FHIR server jar from Maven Central artifacts (cached in ~/.m2), once per version.

    HAPI's own starter project is not published to Maven Central, so ``infra/hapi`` holds a small
    Spring Boot launcher that assembles HAPI's JPA server modules (R4, H2).
    """
    jar = hapi_jar(settings)
    if not jar.exists():
        out = hapi_dir(settings)
        for stale in out.parent.glob("*"):
            shutil.rmtree(stale, ignore_errors=True)  # old builds are ~300 MB each
        _mvn(
            [
                "-f",
                str(INFRA_DIR / "hapi" / "pom.xml"),
                "package",
                "-DskipTests",
                f"-Dhapi.version={settings.hapi_version}",
                f"-Dstudystream.build.dir={out}",
            ],
            f"HAPI FHIR {settings.hapi_version}",
        )
        for leftover in (
            "classes",
            "maven-archiver",
            "maven-status",
            "generated-sources",
            "studystream-hapi.jar.original",
        ):
            target = out / leftover
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
    return jar


def prepare_hapi(settings: Settings) -> ManagedProcess:
    jar = fetch_hapi(settings)
    data = _data_dir(settings, "hapi")
    data.mkdir(parents=True, exist_ok=True)
    host = _host_port_of_url(settings.fhir_base_url)[0]
    return ManagedProcess(
        name="fhir",
        command=[
            _java(settings.hapi_java_home),
            "-Xms256m",
            f"-Xmx{settings.hapi_heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            "-Dfile.encoding=UTF-8",
            "-jar",
            str(jar),
            f"--server.port={settings.fhir_port}",
            f"--server.address={'127.0.0.1' if host in ('localhost', '127.0.0.1') else '0.0.0.0'}",  # noqa: S104
            f"--hapi.fhir.path={settings.fhir_path}",
            f"--hapi.data-dir={data}",
        ],
        cwd=data,
        log_file=_log_file(settings, "fhir"),
        pid_file=_pid_file(settings, "fhir"),
        marker=str(jar),
    )


def fhir_healthy(settings: Settings, timeout: float = 5.0) -> bool:
    """True when ``GET <base>/metadata`` answers 200."""
    if not _port_open(*_host_port_of_url(settings.fhir_base_url)):
        return False
    url = f"{settings.fhir_base_url}/metadata"
    request = urllib.request.Request(url, headers={"Accept": "application/fhir+json"})  # noqa: S310 - configured URL
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - configured URL
            return response.status == 200
    except (urllib.error.URLError, OSError, TimeoutError):
        return False


# --- the stack -------------------------------------------------------------------------------------


def _host_port(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)


def _host_port_of_url(url: str) -> tuple[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.hostname or "localhost", parts.port or (443 if parts.scheme == "https" else 80)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _healthy(settings: Settings, service: str) -> bool:
    return kafka_healthy(settings) if service == "kafka" else fhir_healthy(settings)


def _address(settings: Settings, service: str) -> str:
    return settings.bootstrap_servers[0] if service == "kafka" else settings.fhir_base_url


def _managed(settings: Settings, service: str) -> ManagedProcess:
    """The process description without fetching anything (for status and down)."""
    marker = (
        str(_stack_dir(settings) / "kafka" / "server.properties")
        if service == "kafka"
        else str(hapi_dir(settings) / "studystream-hapi.jar")
    )
    return ManagedProcess(
        name=service,
        command=(),
        cwd=settings.state_dir,
        log_file=_log_file(settings, service),
        pid_file=_pid_file(settings, service),
        marker=marker,
    )


def status(settings: Settings, services: Iterable[str] = SERVICES) -> list[ServiceStatus]:
    result = []
    for service in services:
        managed = _managed(settings, service)
        result.append(
            ServiceStatus(
                name=service,
                pid=processes.running_pid(managed),
                healthy=_healthy(settings, service),
                address=_address(settings, service),
                log_file=managed.log_file,
            )
        )
    return result


def up(
    settings: Settings,
    services: Iterable[str] = SERVICES,
    echo: Callable[[str], None] = print,
) -> list[ServiceStatus]:
    """Fetch, start and wait for each service; a service that already answers is left alone."""
    services = list(services)
    started: list[tuple[str, int]] = []
    for service in services:
        managed = _managed(settings, service)
        if processes.running_pid(managed) is None and _healthy(settings, service):
            echo(f"{service}: already answering at {_address(settings, service)} (not started by this stack)")
            continue
        if processes.running_pid(managed) is not None:
            echo(f"{service}: already running (pid {processes.running_pid(managed)})")
        else:
            echo(f"{service}: fetching and starting (log: {managed.log_file})")
            proc = prepare_kafka(settings) if service == "kafka" else prepare_hapi(settings)
            started.append((service, processes.start(proc)))
    for service in services:
        _wait_healthy(settings, service)
    if "kafka" in services:
        from adapters.topics import ensure_topics

        created = ensure_topics(settings)
        if created:
            echo(f"kafka: created topics {', '.join(created)}")
    result = status(settings, services)
    for item in result:
        echo(f"{item.name}: up at {item.address}" + (f" (pid {item.pid})" if item.pid else ""))
    return result


def _wait_healthy(settings: Settings, service: str) -> None:
    managed = _managed(settings, service)
    deadline = time.monotonic() + settings.stack_start_timeout
    while time.monotonic() < deadline:
        if _healthy(settings, service):
            return
        # Right after the fork the child's command line is still ours, so only liveness is checked here.
        pid = processes.recorded_pid(managed)
        if pid is None or not processes.is_alive(pid):
            last = "\n".join(processes.tail(managed.log_file, 30))
            raise StackError(f"{service} exited during start-up; last lines of {managed.log_file}:\n{last}")
        time.sleep(1.0)
    last = "\n".join(processes.tail(managed.log_file, 30))
    raise StackError(
        f"{service} did not answer at {_address(settings, service)} within {settings.stack_start_timeout:.0f} s "
        f"(STUDYSTREAM_STACK_START_TIMEOUT); last lines of {managed.log_file}:\n{last}"
    )


def down(
    settings: Settings,
    services: Iterable[str] = SERVICES,
    purge: bool = False,
    echo: Callable[[str], None] = print,
) -> None:
    """Stop the services this stack started; with ``purge`` also delete their data and logs."""
    for service in services:
        managed = _managed(settings, service)
        if processes.stop(managed, settings.stack_stop_timeout):
            echo(f"{service}: stopped")
        else:
            echo(f"{service}: not running")
        if purge:
            shutil.rmtree(_data_dir(settings, service), ignore_errors=True)
            managed.log_file.unlink(missing_ok=True)
            echo(f"{service}: data purged")
