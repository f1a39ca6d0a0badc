"""domain.health_decode: what receivers, workers and the group coordinator send `studystream status`.

The house rule for a trust boundary: hostile values (hypothesis) never raise; a body that is not the
expected report makes its component unreadable (degraded or down in the verdict), and no text from it
reaches the screen unfiltered: no patient data even when a worker's rows carry it.
"""

from __future__ import annotations

import json
import zlib

import orjson
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata
from faust.assignor.client_assignment import ClientAssignment, ClientMetadata
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain.health import Level, Reachability, ReceiverHealth, Snapshot, StudyCounts, Thresholds, WorkerMember, judge
from domain.health_decode import (
    WorkerStudies,
    clean_text,
    decode_member,
    decode_receiver_health,
    decode_studies_answer,
    decode_worker_health,
    member_urls,
    merge_studies,
)

LIMITS = Thresholds(partition_lag=1000, outbox_depth=1000, quarantine_depth=0, dead_letters=0, parked=0, failed=0)
UP = Reachability("broker", "b", True)
MAX_BYTES = 1024 * 1024
URL = "http://127.0.0.1:9110/health"
RECEIVER_REPORT = {
    "ok": True,
    "status": "ok",
    "ae_title": "STUDYSTREAM",
    "port": 11112,
    "broker_connected": True,
    "outbox_depth": 3,
    "quarantine_depth": 0,
    "associations": 1,
}
STUDY_UID = "1.2.826.0.1.3680043.10.1404.1"
PATIENT_NAME = "Yamada^Tarou"


def studies_answer(**changes: object) -> dict[str, object]:
    row = {"study_uid": STUDY_UID, "status": "failed", "patient": {"name": PATIENT_NAME, "id": "PID-77"}}
    answer: dict[str, object] = {
        "studies": [row, {"study_uid": "1.2.3", "status": "published", "patient": None}],
        "counts": {"receiving": 0, "ready": 0, "published": 1, "failed": 1, "conflict": 0},
        "upload_outage": {"parked": 2, "oldest_parked_seconds": 61.5},
        "complete": True,
        "errors": [],
        "generated_at": "2026-01-01T00:00:00.000Z",
    }
    answer.update(changes)
    return answer


def faust_member(url: str = "http://worker-1:6066/") -> tuple[bytes, bytes]:
    """A member's metadata and assignment as a Faust 0.15 worker sends and gets them."""
    client = ClientMetadata(
        assignment=ClientAssignment(actives={"imaging.raw": [0, 1, 2]}, standbys={}), url=url, changelog_distribution={}
    ).dumps()
    metadata = ConsumerProtocolMemberMetadata(0, ["imaging.raw", "imaging.study.ready"], client).encode()
    assignment = ConsumerProtocolMemberAssignment(
        0,
        [("imaging.raw", [2, 0, 1]), ("imaging.study.ready", [5]), ("app-headers-changelog", [])],
        zlib.compress(client),
    ).encode()
    return metadata, assignment


def verdict_of_receiver(health: ReceiverHealth) -> Level:
    return judge(Snapshot(UP, Reachability("fhir", "f", True), receivers=(health,)), LIMITS).level


# --- receivers ---


def test_a_receiver_report_is_read() -> None:
    health = decode_receiver_health(URL, 200, orjson.dumps(RECEIVER_REPORT))
    assert health.readable and health.serving and health.broker_connected
    assert (health.outbox_depth, health.quarantine_depth, health.associations) == (3, 0, 1)
    assert verdict_of_receiver(health) is Level.HEALTHY


def test_a_receiver_not_serving_is_down_and_a_wrong_page_too() -> None:
    not_serving = decode_receiver_health(URL, 503, orjson.dumps({**RECEIVER_REPORT, "ok": False}))
    assert not_serving.readable and verdict_of_receiver(not_serving) is Level.DOWN
    assert verdict_of_receiver(decode_receiver_health(URL, 404, b"not found\n")) is Level.DOWN


def test_a_receiver_report_with_a_wrong_type_is_unreadable() -> None:
    for bad in ({"outbox_depth": "3"}, {"outbox_depth": True}, {"quarantine_depth": -1}, {"ok": "yes"}, {"ok": None}):
        health = decode_receiver_health(URL, 200, orjson.dumps({**RECEIVER_REPORT, **bad}))
        assert not health.readable and health.error == "unreadable health", bad
        assert verdict_of_receiver(health) is Level.DEGRADED


JUNK = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.sampled_from(["", "ok", "1.2.3", PATIENT_NAME, "\x1b[31m", "[bold red]x[/]", "\u202e", "x" * 5000]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@st.composite
def hostile_body(draw: st.DrawFn, valid: dict[str, object]) -> bytes:
    """A valid body with fields set to junk, deleted, or added; or junk bytes; or junk JSON."""
    kind = draw(st.sampled_from(["mutated", "json", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "json":
        return json.dumps(draw(JUNK)).encode()
    data = dict(valid)
    for _ in range(draw(st.integers(1, 4))):
        name = draw(st.sampled_from(sorted(valid)))
        if draw(st.booleans()):
            data[name] = draw(JUNK)
        else:
            data.pop(name, None)
    # json (not orjson): integers beyond 64 bits, which orjson then refuses to read
    return json.dumps(data).encode()


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_body(RECEIVER_REPORT), st.sampled_from([200, 503, 500, 302]))
def test_hostile_receiver_bodies_never_raise_and_are_unreadable_or_judged(body: bytes, status: int) -> None:
    health = decode_receiver_health(URL, status, body)
    assert isinstance(health, ReceiverHealth) and health.reachable
    level = verdict_of_receiver(health)
    if not health.readable:
        assert level is Level.DOWN if status != 200 else level is Level.DEGRADED
        assert health.error in ("unreadable health", f"HTTP {status}")
    else:
        assert isinstance(health.outbox_depth, int) and health.outbox_depth >= 0
        assert isinstance(health.quarantine_depth, int) and health.quarantine_depth >= 0


# --- workers' web API ---


def test_worker_health() -> None:
    assert decode_worker_health(200, b'{"status": "ok"}') == "ok"
    assert decode_worker_health(503, b'{"status": "rebalancing"}') == "rebalancing"
    assert decode_worker_health(503, b'{"status": "ok"}') == "HTTP 503"
    assert decode_worker_health(200, b"<html>") == "unreadable health"


@settings(max_examples=200)
@given(st.binary(max_size=100) | JUNK.map(lambda v: json.dumps(v).encode()), st.sampled_from([200, 503, 404]))
def test_hostile_worker_health_never_raises(body: bytes, status: int) -> None:
    state = decode_worker_health(status, body)
    assert isinstance(state, str) and state and len(state) <= 40 and clean_text(state) == state


def test_a_studies_answer_keeps_counts_parked_and_failed_uids_but_no_patient_data() -> None:
    decoded = decode_studies_answer(orjson.dumps(studies_answer()))
    assert decoded == WorkerStudies(
        {"receiving": 0, "ready": 0, "published": 1, "failed": 1, "conflict": 0}, True, 2, 61.5, (STUDY_UID,)
    )
    assert PATIENT_NAME not in repr(decoded) and "PID-77" not in repr(decoded)


def test_answers_of_several_workers_are_merged() -> None:
    one = decode_studies_answer(orjson.dumps(studies_answer()))
    other = decode_studies_answer(
        orjson.dumps(studies_answer(upload_outage={"parked": 1, "oldest_parked_seconds": 300}, complete=False))
    )
    assert one is not None and other is not None
    merged = merge_studies([other, one], uid_limit=10)
    assert merged.counts["failed"] == 1 and merged.complete
    assert (merged.parked, merged.oldest_parked_seconds) == (3, 300.0)
    assert (merged.workers_asked, merged.workers_answered) == (2, 2)
    partial = merge_studies([one, "http://w2:6066: timed out"], uid_limit=0)
    assert not partial.complete and partial.failed_uids == ()
    none = merge_studies(["http://w2:6066: unreadable answer"], uid_limit=10)
    assert none.error == "http://w2:6066: unreadable answer"
    assert merge_studies([], uid_limit=10).error == "no worker web URL known"


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_body(studies_answer()))
def test_hostile_studies_answers_never_raise_and_print_no_name(body: bytes) -> None:
    decoded = decode_studies_answer(body)
    merged = merge_studies([decoded if decoded is not None else "w: unreadable answer"], uid_limit=10)
    assert isinstance(merged, StudyCounts)
    assert PATIENT_NAME not in repr(merged)
    assert all(set(uid) <= set("0123456789.") for uid in merged.failed_uids)
    assert all(isinstance(v, int) and v >= 0 for v in merged.counts.values())
    snapshot = Snapshot(UP, Reachability("fhir", "f", True), studies=merged)
    level = judge(snapshot, LIMITS).level
    assert level in (Level.HEALTHY, Level.DEGRADED)
    if decoded is None:
        assert level is Level.DEGRADED


@settings(max_examples=100)
@given(st.lists(JUNK, max_size=5))
def test_junk_rows_in_a_valid_answer_are_skipped(rows: list[object]) -> None:
    decoded = decode_studies_answer(json.dumps(studies_answer(studies=rows)).encode())
    assert decoded is None or all(set(uid) <= set("0123456789.") for uid in decoded.failed_uids)


# --- consumer group members ---


def test_a_faust_member_gives_its_partitions_and_web_url() -> None:
    metadata, assignment = faust_member()
    member = decode_member("m-1", "faust-0.15.3", "/10.0.0.5", metadata, assignment, MAX_BYTES)
    assert member.partitions == {"imaging.raw": (0, 1, 2), "imaging.study.ready": (5,), "app-headers-changelog": ()}
    assert (member.url, member.host, member.client_id) == ("http://worker-1:6066", "10.0.0.5", "faust-0.15.3")
    assert member_urls([member, member, WorkerMember("m-2", "c", "h")]) == ["http://worker-1:6066"]


def test_a_member_without_an_assignment_yet_has_no_partitions_and_its_url_from_the_subscription() -> None:
    metadata, _ = faust_member("http://worker-2:6067")
    member = decode_member("m-2", "c", "h", metadata, b"", MAX_BYTES)
    assert member.partitions == {} and member.url == "http://worker-2:6067"


def test_a_member_url_that_is_not_plain_http_is_dropped() -> None:
    for url in ("javascript:alert(1)", "http://user:pw@host/", "http://h/x?token=1", "ftp://h", "http://h/\n"):
        metadata, assignment = faust_member(url)
        assert decode_member("m", "c", "h", metadata, assignment, MAX_BYTES).url == "", url


def test_a_compressed_bomb_is_not_inflated() -> None:
    bomb = zlib.compress(b'{"url": "http://h:1", "pad": "' + b"x" * 5_000_000 + b'"}')
    assignment = ConsumerProtocolMemberAssignment(0, [("t", [0])], bomb).encode()
    member = decode_member("m", "c", "h", None, assignment, MAX_BYTES)
    assert member.partitions == {"t": (0,)} and member.url == ""


@st.composite
def hostile_member_bytes(draw: st.DrawFn) -> bytes:
    metadata, assignment = faust_member()
    valid = draw(st.sampled_from([metadata, assignment]))
    kind = draw(st.sampled_from(["random", "truncated", "flipped", "valid"]))
    if kind == "random":
        return draw(st.binary(max_size=300))
    if kind == "truncated":
        return valid[: draw(st.integers(0, len(valid)))]
    if kind == "flipped":
        data = bytearray(valid)
        for _ in range(draw(st.integers(1, 6))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    return valid


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_member_bytes(), hostile_member_bytes(), JUNK, JUNK)
def test_hostile_member_bytes_never_raise(
    metadata: bytes, assignment: bytes, member_id: object, client: object
) -> None:
    member = decode_member(member_id, client, client, metadata, assignment, MAX_BYTES)
    assert isinstance(member, WorkerMember)
    assert member.url == "" or member.url.startswith(("http://", "https://"))
    if member.partitions is not None:
        assert all(isinstance(p, int) and p >= 0 for ps in member.partitions.values() for p in ps)
    for text in (member.member_id, member.client_id, member.host, *(member.partitions or {})):
        assert clean_text(text) == text


def test_clean_text_drops_control_and_direction_characters_and_bounds_length() -> None:
    assert clean_text("a\x1b[31mb\u202ec\nd") == "a[31mbcd"
    assert len(clean_text("x" * 1000)) == 200
    assert clean_text(None) == "" and clean_text(42) == ""
