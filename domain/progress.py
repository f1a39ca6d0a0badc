"""Input progress watch: tells when an owned partition lags behind its end without moving (pure)."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field


@dataclass(slots=True)
class StallDetector:
    """Remembers, per partition, the position last seen and since when it has not moved while lagging.

    A partition is stalled when its end offset is ahead of the position the aggregator processed up to
    and that position has not changed for ``timeout`` seconds. A partition that is caught up, or moving,
    is never stalled, however long it lags.
    """

    timeout: float
    _since: dict[Hashable, tuple[int, float]] = field(default_factory=dict)

    def observe(self, partition: Hashable, position: int | None, end_offset: int | None, now: float) -> bool:
        if position is None or end_offset is None or position >= end_offset:
            self._since.pop(partition, None)
            return False
        seen = self._since.get(partition)
        if seen is None or seen[0] != position:
            self._since[partition] = (position, now)
            return False
        return now - seen[1] >= self.timeout

    def forget(self, partition: Hashable) -> None:
        self._since.pop(partition, None)
