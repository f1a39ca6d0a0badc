"""The stall detector behind the aggregator's input watchdog."""

from __future__ import annotations

from domain.progress import StallDetector


def test_a_lagging_partition_that_does_not_move_is_stalled_after_the_timeout() -> None:
    detector = StallDetector(timeout=30.0)
    assert not detector.observe(0, position=5, end_offset=10, now=100.0)
    assert not detector.observe(0, position=5, end_offset=10, now=129.9)
    assert detector.observe(0, position=5, end_offset=10, now=130.0)


def test_a_moving_or_caught_up_partition_is_never_stalled() -> None:
    detector = StallDetector(timeout=30.0)
    for step in range(10):  # lags all along but moves
        assert not detector.observe(1, position=step, end_offset=1000, now=100.0 + 40 * step)
    assert not detector.observe(2, position=10, end_offset=10, now=100.0)
    assert not detector.observe(2, position=10, end_offset=10, now=1000.0)


def test_unknown_positions_and_forgotten_partitions_start_over() -> None:
    detector = StallDetector(timeout=30.0)
    assert not detector.observe(0, position=None, end_offset=10, now=100.0)
    assert not detector.observe(0, position=5, end_offset=None, now=100.0)
    assert not detector.observe(0, position=5, end_offset=10, now=100.0)
    detector.forget(0)
    assert not detector.observe(0, position=5, end_offset=10, now=200.0)
    assert detector.observe(0, position=5, end_offset=10, now=230.0)
