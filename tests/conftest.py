"""Shared fixtures. Tests that need the real stack FAIL (never skip) when it does not answer.

``make test`` brings the local stack up before pytest; to run tests by hand: ``studystream stack up``.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from app.settings import Settings
from app.topology import topology

ROOT = Path(__file__).resolve().parent.parent


# Ports handed to the processes a test starts come from below the ephemeral range (32768-60999 here):
# a port the OS picked for bind(0) could be taken by any outgoing connection (a Kafka client, storescu)
# before the process binds it, and was, once (the receiver's metrics port). Each is handed out once;
# several receiving processes use their base port + slot, so the ports handed out are 4 apart.
_PORTS = itertools.count(20000 + (os.getpid() * 7919) % 10000, 4)


def free_port() -> int:
    """A TCP port nobody listens on right now and no other test of this session was given."""
    for port in _PORTS:
        if port >= 32768:
            break
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # the range is used up: let the OS pick
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], object], timeout: float, interval: float = 0.2, what: str = "condition") -> object:
    """Poll ``condition`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


def unique_uid(prefix: str = "1.2.826.0.1.3680043.10.1404") -> str:
    """A fresh DICOM UID (<= 64 chars) so tests never see each other's studies."""
    return f"{prefix}.{uuid.uuid4().int % 10**20}"


@pytest.fixture(scope="session")
def settings() -> Settings:
    """Settings as the environment (and .env) give them: the stack `make test` started."""
    return Settings()


@pytest.fixture(scope="session")
def kafka(settings: Settings) -> Settings:
    """The real broker; fails the test when it does not answer."""
    from infra.stack import kafka_healthy

    if not kafka_healthy(settings, timeout=10):
        pytest.fail(f"Kafka does not answer at {settings.broker_url}: run `studystream stack up`", pytrace=False)
    return settings


@pytest.fixture(scope="session")
def fhir(settings: Settings) -> Settings:
    """The real HAPI FHIR server; fails the test when it does not answer."""
    from infra.stack import fhir_healthy

    if not fhir_healthy(settings, timeout=10):
        pytest.fail(f"FHIR does not answer at {settings.fhir_base_url}: run `studystream stack up`", pytrace=False)
    return settings


_SESSION_TOKENS: list[str] = []


def new_token() -> str:
    """A short unique suffix for topic names, group ids and identifiers, remembered for clean-up."""
    token = uuid.uuid4().hex[:12]
    _SESSION_TOKENS.append(token)
    return token


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic names, group ids and identifiers."""
    return new_token()


def pipeline_settings(kafka: Settings, kind: str, tmp: Path, **overrides: object) -> Settings:
    """Settings of a pipeline nobody else uses: unique app id and topics (``test.<kind>.*``), own directories.

    Short timings for tests: completeness checks every 0.2 s, a dead worker's partitions move after 6 s.
    """
    token = new_token()
    values: dict[str, object] = dict(
        broker_url=kafka.broker_url,
        app_id=f"test-{kind}-{token}",
        topic_raw=f"test.{kind}.raw.{token}",
        topic_ready=f"test.{kind}.ready.{token}",
        topic_dlq=f"test.{kind}.dlq.{token}",
        topic_retry=f"test.{kind}.retry.{token}",
        topic_control=f"test.{kind}.control.{token}",
        state_dir=tmp / "state",
        bundles_dir=tmp / "bundles",
        aggregator_check_interval=0.2,
        aggregator_session_timeout=6.0,
    )
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


async def create_test_topics(settings: Settings, names: Sequence[str] | None = None) -> None:
    """Create a test's own topics (the public topics of app.topology by default), which must not exist yet.

    No metadata lookup first: it would make a broker with auto.create.topics.enable create them with
    its default partition count; the worker's own ensure_topics call then finds them already right.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        config = {"max.message.bytes": str(settings.max_message_bytes)}
        response = await admin.create_topics(
            [
                NewTopic(name, settings.topic_partitions, 1, topic_configs=config)
                for name in names or [d.name for d in topology(settings).public]
            ]
        )
        assert all(code == 0 for _, code, *_ in response.topic_errors), response
    finally:
        await admin.close()


def worker_env(settings: Settings) -> dict[str, str]:
    """The environment of a subprocess that must use exactly ``settings`` (and no STUDYSTREAM_* of ours)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDYSTREAM_")}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"STUDYSTREAM_{name.upper()}"] = str(value)
    return env


@pytest.fixture(scope="session", autouse=True)
def delete_test_topics(settings: Settings) -> Iterator[None]:
    """At the end of the session, delete the topics this session's tests created (their names hold a token).

    Without it every run leaves ~1,000 partitions on the local broker; after a few dozen runs its
    512 MB heap runs out (seen on a developer machine). Best effort: a broker that is gone is left alone.
    """
    yield
    if _SESSION_TOKENS:
        import asyncio

        try:
            asyncio.run(asyncio.wait_for(_delete_topics_holding(settings, set(_SESSION_TOKENS)), 120))
        except Exception as exc:
            print(f"\ntest topics not deleted: {type(exc).__name__}: {exc}")


async def _delete_topics_holding(settings: Settings, tokens: set[str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, request_timeout_ms=60_000)
    await admin.start()
    try:
        names = [name for name in await admin.list_topics() if any(token in name for token in tokens)]
        for start in range(0, len(names), 100):
            await admin.delete_topics(names[start : start + 100], timeout_ms=60_000)
    finally:
        await admin.close()


@pytest.fixture
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Run in an empty directory with no STUDYSTREAM_* variables set; returns that directory."""
    for name in list(os.environ):
        if name.startswith("STUDYSTREAM_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path
