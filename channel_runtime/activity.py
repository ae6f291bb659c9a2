"""Per-minute message counts per channel over the last hour, for the admin page's overview.

Counted in this process as the runtime accepts inbound messages and finishes
delivery attempts; kept in memory (a bounded ring per channel), so a restart
starts from zero and each host of a scale-out counts its own traffic.
"""

from __future__ import annotations

import collections
from typing import Any, Literal

from plugin_host.clock import Clock

Series = Literal["in", "sent", "deferred", "dead"]
SERIES: tuple[Series, ...] = ("in", "sent", "deferred", "dead")
WINDOW_MINUTES = 60
# a runtime with more channels keeps counting the busiest ones it saw first: memory stays bounded
MAX_CHANNELS = 1000


class ActivityCounts:
    """`count(channel_id, series)` as things happen; `window()` for the last hour, minute by minute."""

    def __init__(self, clock: Clock, minutes: int = WINDOW_MINUTES) -> None:
        self.clock = clock
        self.minutes = minutes
        # channel id -> minute number (epoch minutes) -> series -> count
        self._channels: dict[str, collections.OrderedDict[int, dict[str, int]]] = {}

    def count(self, channel_id: str, series: Series, n: int = 1) -> None:
        minutes = self._channels.get(channel_id)
        if minutes is None:
            if len(self._channels) >= MAX_CHANNELS:
                return
            minutes = self._channels[channel_id] = collections.OrderedDict()
        now = self._minute()
        bucket = minutes.get(now)
        if bucket is None:
            bucket = minutes[now] = dict.fromkeys(SERIES, 0)
            while next(iter(minutes)) <= now - self.minutes:
                minutes.popitem(last=False)
        bucket[series] += n

    def forget(self, channel_id: str) -> None:
        self._channels.pop(channel_id, None)

    def window(self) -> dict[str, Any]:
        """`{start, minutes, channels: {channel_id: {series: [count per minute, oldest first]}}}`.

        `start` is the epoch second the first minute begins at; channels with no
        count in the window are left out.
        """
        now = self._minute()
        first = now - self.minutes + 1
        channels: dict[str, dict[str, list[int]]] = {}
        for channel_id, minutes in self._channels.items():
            series: dict[str, list[int]] = {name: [0] * self.minutes for name in SERIES}
            seen = False
            for minute, bucket in minutes.items():
                if minute < first:
                    continue
                for name in SERIES:
                    series[name][minute - first] = bucket[name]
                seen = True
            if seen:
                channels[channel_id] = series
        return {"start": first * 60, "minutes": self.minutes, "channels": channels}

    def _minute(self) -> int:
        return int(self.clock.time() // 60)
