"""The uploader's pure rules: what an answer means, what follows an attempt, what is recorded per study."""

from __future__ import annotations

import pytest

from domain import upload as rules
from domain.upload import Action, AttemptCounts, RetryPolicy, Verdict, next_step

POLICY = RetryPolicy(
    inline_attempts=3,
    inline_budget=20.0,
    conflict_attempts=12,
    conflict_delay_max=0.25,
    inline_conflict_attempts=9,
    backoff_initial=0.5,
    backoff_max=60.0,
    backoff_jitter=0.0,
)


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, Verdict.SUCCESS),
        (201, Verdict.SUCCESS),
        (409, Verdict.CONFLICT),
        (412, Verdict.CONFLICT),
        (429, Verdict.TRANSIENT),
        (408, Verdict.TRANSIENT),
        (500, Verdict.TRANSIENT),
        (503, Verdict.TRANSIENT),
        (401, Verdict.TRANSIENT),
        (403, Verdict.TRANSIENT),
        (400, Verdict.REJECT),
        (404, Verdict.REJECT),
        (410, Verdict.REJECT),
        (422, Verdict.REJECT),
    ],
)
def test_classify_status(status: int, verdict: Verdict) -> None:
    assert rules.classify_status(status) is verdict


def test_backoff_grows_exponentially_up_to_the_maximum_with_bounded_jitter() -> None:
    assert [rules.backoff_delay(n, 0.5, 10.0, 0.0, 0.3) for n in (1, 2, 3, 4, 5, 6)] == [0.5, 1, 2, 4, 8, 10]
    assert rules.backoff_delay(3, 0.5, 10.0, 0.5, 0.0) == 1.0  # -50 %
    assert rules.backoff_delay(3, 0.5, 10.0, 0.5, 0.999999) == pytest.approx(3.0, rel=1e-5)  # +50 %
    assert rules.backoff_delay(10**6, 0.5, 10.0, 0.0, 0.0) == 10.0  # a very long outage: no overflow


def test_a_transient_failure_is_retried_inline_then_parked_and_never_dead_lettered() -> None:
    first = next_step(Verdict.TRANSIENT, AttemptCounts(1, 1, 0, 0.0), POLICY, 0.5)
    assert first == rules.Step(Action.RETRY_INLINE, 0.5)
    third = next_step(Verdict.TRANSIENT, AttemptCounts(3, 3, 0, 2.0), POLICY, 0.5)
    assert third.action is Action.PARK
    for total in (12, 100, 10_000):  # far past any attempt budget: still parked, at the capped backoff
        step = next_step(Verdict.TRANSIENT, AttemptCounts(1, total, 0, 0.0), POLICY, 0.5, healthy=False)
        assert step == rules.Step(Action.PARK, 60.0)


def test_a_server_known_to_be_down_is_not_retried_inline() -> None:
    assert next_step(Verdict.TRANSIENT, AttemptCounts(1, 5, 0, 0.0), POLICY, 0.5, healthy=False).action is Action.PARK


def test_retry_after_is_honoured_up_to_the_backoff_maximum() -> None:
    assert next_step(Verdict.TRANSIENT, AttemptCounts(1, 1, 0, 0.0), POLICY, 0.5, retry_after=7.0).delay == 7.0
    assert next_step(Verdict.TRANSIENT, AttemptCounts(3, 3, 0, 0.0), POLICY, 0.5, retry_after=1e9).delay == 60.0


def test_the_inline_budget_parks_a_retry_that_would_hold_the_partition_too_long() -> None:
    assert next_step(Verdict.TRANSIENT, AttemptCounts(2, 4, 0, 19.0), POLICY, 0.5).action is Action.PARK


def test_conflicts_are_retried_almost_at_once_a_bounded_number_of_times() -> None:
    step = next_step(Verdict.CONFLICT, AttemptCounts(1, 1, 1, 0.0), POLICY, 0.999)
    assert step.action is Action.RETRY_INLINE and step.delay < 0.25
    assert next_step(Verdict.CONFLICT, AttemptCounts(9, 9, 9, 1.0), POLICY, 0.5).action is Action.PARK
    assert next_step(Verdict.CONFLICT, AttemptCounts(1, 30, 12, 0.0), POLICY, 0.5).action is Action.DEAD_LETTER


def test_rejection_and_success() -> None:
    assert next_step(Verdict.REJECT, AttemptCounts(1, 1, 0, 0.0), POLICY, 0.5).action is Action.DEAD_LETTER
    assert next_step(Verdict.SUCCESS, AttemptCounts(1, 1, 0, 0.0), POLICY, 0.5).action is Action.DONE


def test_retry_after_header() -> None:
    assert rules.retry_after_seconds("7", 0.0) == 7.0
    assert rules.retry_after_seconds("9" * 40, 0.0) == 86_400.0
    assert rules.retry_after_seconds("Wed, 21 Oct 2015 07:28:10 GMT", 1445412480.0) == 10.0
    assert rules.retry_after_seconds("soon", 0.0) is None
    assert rules.retry_after_seconds(None, 0.0) is None


def test_operation_outcome_summaries_keep_diagnostics_out_of_the_loggable_form() -> None:
    body = (
        b'{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"processing",'
        b'"diagnostics":"HAPI-0539: Invalid conditional URL \\"Patient?identifier=sys|PID-9\\""}]}'
    )
    outcome = rules.operation_outcome(body)
    assert rules.outcome_issue_codes(outcome) == "error/processing HAPI-0539"
    assert "PID-9" in rules.outcome_diagnostics(outcome)
    assert rules.operation_outcome(b"<html>") is None
    assert rules.operation_outcome(b'{"resourceType":"OperationOutcome","issue":"x"}') is None
    assert rules.outcome_issue_codes({"issue": [None, 3, {"severity": "x" * 100}]}) == f"{'x' * 16}/?"


def test_study_location_from_a_transaction_response() -> None:
    response = {
        "entry": [
            {"response": {"location": "Patient/1/_history/1"}},
            {"response": {"location": "ImagingStudy/5/_history/2"}},
        ]
    }
    assert rules.study_location(response) == "ImagingStudy/5/_history/2"
    assert rules.study_location({"entry": [None, {"response": "x"}]}) == ""
    assert rules.study_location([]) == ""
    assert rules.without_history("ImagingStudy/5/_history/2") == "ImagingStudy/5"


def test_outcome_state_transitions_keep_the_published_revision_and_when_retries_began() -> None:
    first = rules.published(None, "1.2", (1, 1), "http://fhir/ImagingStudy/5", "t1")
    assert rules.is_superseded(first, (1, 1)) and not rules.is_superseded(first, (1, 2))
    assert not rules.is_superseded(first, (2, 1))  # a new state generation comes after
    parked = rules.not_published(first, "1.2", (1, 2), rules.UploadStatus.RETRYING, "HTTP 503", 503, 3, "t2", "t3")
    assert (parked.published_revision, parked.resource_url, parked.status) == (1, first.resource_url, "retrying")
    assert parked.retrying_since == "t2"
    again = rules.not_published(parked, "1.2", (1, 2), rules.UploadStatus.RETRYING, "HTTP 503", 503, 4, "t4", "t5")
    assert again.retrying_since == "t2"  # the outage began at the first failure
    assert rules.decode_outcome(rules.encode_outcome(parked)) == parked
    later = rules.published(parked, "1.2", (1, 2), "", "t6")
    assert (later.published_revision, later.resource_url, later.retrying_since) == (2, first.resource_url, "")


def test_outcomes_written_before_generations_still_decode() -> None:
    old = b'{"v":1,"study_uid":"1.2","revision":3,"status":"published","published_revision":3}'
    outcome = rules.decode_outcome(old)
    assert outcome.published_version == (1, 3)
