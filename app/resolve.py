"""``studystream resolve``: decide a study held as a patient conflict.

A study whose instances name more than one patient (PatientID within its issuer) is not uploaded; the
web view lists its patient identities by key (a hash: no patient data on the command line or in the
logs). This command files the study under one of them: it checks the study on a worker's web API
(``--no-check`` skips that), then writes a :class:`domain.events.PatientResolution` to imaging.raw,
keyed by the study. The aggregator applies it in order with the study's instances, so it covers the
identities present when it is read; its next revision is ready at once. A later instance of yet
another patient makes a new conflict.

The other way out needs no command: send the study again, corrected, from the source.
"""

from __future__ import annotations

import asyncio
import getpass
import re
import time

import click
import httpx
from aiokafka import AIOKafkaProducer

from app.settings import Settings, get_settings
from domain.errors import StudyStreamError
from domain.events import PatientResolution, encode_resolution
from domain.study import iso_utc
from domain.uids import is_valid_uid

_KEY = re.compile(r"\A[0-9a-f]{16}\Z")


class ResolveError(StudyStreamError):
    """The study cannot be resolved as asked (named without patient data)."""


def web_headers(settings: Settings) -> dict[str, str]:
    if settings.web_token is not None:
        return {"Authorization": f"Bearer {settings.web_token.get_secret_value()}"}
    return {}


def check_study(settings: Settings, web_url: str, study_uid: str, key: str) -> int:
    """The study's state on the web API: in conflict, with ``key`` among its identities. Returns its revision."""
    auth = None
    if settings.web_basic_user and settings.web_basic_password is not None:
        auth = httpx.BasicAuth(settings.web_basic_user, settings.web_basic_password.get_secret_value())
    try:
        response = httpx.get(
            f"{web_url.rstrip('/')}/api/studies/{study_uid}",
            headers=web_headers(settings),
            auth=auth,
            timeout=settings.web_peer_timeout,
            follow_redirects=True,
        )
    except httpx.HTTPError as exc:
        raise ResolveError(f"no worker web API at {web_url} ({type(exc).__name__}); --no-check sends anyway") from None
    if response.status_code == 404:
        raise ResolveError(f"study {study_uid} is not known to the aggregator")
    if response.status_code != 200:
        raise ResolveError(f"the web API answered HTTP {response.status_code}")
    detail = response.json()
    keys = [p.get("key") for p in detail.get("patients") or ()]
    if detail.get("status") != "conflict":
        raise ResolveError(f"study {study_uid} is not in conflict (status {detail.get('status')})")
    if key not in keys:
        raise ResolveError(f"{key} is not one of the study's patient identities ({', '.join(map(str, keys))})")
    return int(detail.get("revision") or 0)


async def send_resolution(settings: Settings, resolution: PatientResolution) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(settings.topic_raw, value=encode_resolution(resolution), key=resolution.key)
    finally:
        await producer.stop()


@click.command("resolve")
@click.argument("study_uid")
@click.option(
    "--patient", "patient_key", required=True, metavar="KEY", help="The identity key the study is filed under."
)
@click.option("--web-url", default=None, help="A worker's web view (default: http://localhost:<web port>).")
@click.option("--no-check", is_flag=True, help="Send without asking a worker first (the aggregator still checks).")
def resolve(study_uid: str, patient_key: str, web_url: str | None, no_check: bool) -> None:
    """File a study held as a patient conflict under one of its patient identities.

    \b
    The keys are on the study's page of the web view (and /api/studies/<uid>): one per patient
    identity among its instances. Example: studystream resolve 1.2.3.4 --patient 3f2a9c0d1e4b5a67
    """
    settings = get_settings()
    if not is_valid_uid(study_uid):
        raise ResolveError(f"{study_uid!r} is not a study instance UID")
    if not _KEY.match(patient_key):
        raise ResolveError("--patient takes the 16-character key the web view shows")
    if not no_check:
        revision = check_study(settings, web_url or f"http://localhost:{settings.web_port}", study_uid, patient_key)
        click.echo(f"study {study_uid} revision {revision}: in conflict; filing it under {patient_key}")
    resolution = PatientResolution(
        study_uid=study_uid,
        patient_key=patient_key,
        requested_at=iso_utc(time.time()),
        requested_by=getpass.getuser(),
    )
    asyncio.run(send_resolution(settings, resolution))
    click.echo(f"resolution sent to {settings.topic_raw}; the study's next revision is ready at once")
