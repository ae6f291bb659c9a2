"""The HTTP server of `serve`: uvicorn with bounds on connections, time and log lines (issue 14).

    limits = open_files_raised()                 # RLIMIT_NOFILE soft limit up to the hard one (root: higher)
    config = server_config(app, settings, open_files=limits)
    quiet_repeats(); hide_query_strings()        # after uvicorn configured its loggers

- Connections: at most `max_connections` open at once (default: what the open-file limit
  leaves after a reserve for plugins' pipes and the database). One more evicts the oldest
  connection that is not serving a request (an idle keep-alive, or one that never sent a
  whole request); if every one is busy, the new one is closed. So a flood of idle sockets
  can never use up the descriptors `/healthz` and the plugins need.
- Time: a connection has `header_timeout` seconds to send each request's headers
  (uvicorn itself only times out idle keep-alive connections: a slow or silent client
  would hold its socket forever); `keepalive_timeout` between requests.
- Logs: a line repeated (same logger, level and text) more than
  `REPEATS_PER_WINDOW` times in `REPEAT_WINDOW` seconds is held back and counted; the
  count is added to the next one let through. The access log never shows query strings.
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from channel_runtime.settings import Settings

# descriptors kept for everything else: plugins' pipes (3 each), the database, spooled uploads
FD_RESERVE = 256
# the listen backlog is also how many connections asyncio accepts in one go; evictions free
# descriptors a few loop iterations later, so a few bursts' worth of descriptors stays free
BURSTS_IN_FLIGHT = 4
MAX_DEFAULT_CONNECTIONS = 4096
OPEN_FILES_TARGET = 65_536
REPEAT_WINDOW = 60.0
REPEATS_PER_WINDOW = 5

log = logging.getLogger("channel_runtime.server")


# ---------------------------------------------------------------- descriptors


def open_files_raised(target: int = OPEN_FILES_TARGET) -> int:
    """Raise this process's RLIMIT_NOFILE towards `target` (the hard limit too when allowed); the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max(soft, target)
    for new_hard in (max(hard, wanted), hard):  # as root the hard limit may rise as well
        new_soft = min(wanted, new_hard)
        if new_soft <= soft and new_hard == hard:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, new_hard))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def accept_burst(open_files: int) -> int:
    """The listen backlog: small when descriptors are scarce (1,024 -> 96), 2,048 when plenty."""
    return max(64, min(2048, (open_files - FD_RESERVE) // 8))


def connection_limit(settings: Settings, open_files: int) -> int:
    if settings.max_connections is not None:
        return settings.max_connections
    spare = open_files - FD_RESERVE - accept_burst(open_files) * BURSTS_IN_FLIGHT
    return max(32, min(MAX_DEFAULT_CONNECTIONS, spare))


# ---------------------------------------------------------------- the protocol


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header timeout and a connection cap that evicts idle connections.

    `server_config` makes one subclass per server: the class attributes are that server's.
    """

    header_timeout: float = 10.0
    max_connections: int = MAX_DEFAULT_CONNECTIONS
    on_evicted: Callable[[], None] = staticmethod(lambda: None)
    # connections not serving a request, oldest first (a dict keeps insertion order)
    idle: dict[GuardedH11Protocol, None] = {}

    def connection_made(self, transport: Any) -> None:
        self._header_timer: Any = None
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._make_room()
        if not self.transport.is_closing():
            self.idle[self] = None
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.idle.pop(self, None)
        self._disarm_header_timer()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self._serving():
            self.idle.pop(self, None)
            self._disarm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self.idle[self] = None  # idle again, and now the newest
            self._arm_header_timer()  # the next request's headers have the same time

    # ---------------------------------------------------------------- internals

    def _serving(self) -> bool:
        cycle = self.cycle
        return cycle is not None and not cycle.response_complete

    def _make_room(self) -> None:
        victim: GuardedH11Protocol = self  # every connection busy: the new one goes
        while self.idle:
            oldest = next(iter(self.idle))
            del self.idle[oldest]
            if not oldest.transport.is_closing() and not oldest._serving():
                victim = oldest
                break
        victim.transport.close()
        self.on_evicted()

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_timed_out)

    def _disarm_header_timer(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if not self._serving() and not self.transport.is_closing():
            self.transport.close()


class _EvictionReport:
    """One log line per minute at most about evicted connections, with their count."""

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.clock = clock
        self.count = 0
        self.reported_at: float | None = None

    def __call__(self) -> None:
        self.count += 1
        now = self.clock()
        if self.reported_at is None or now - self.reported_at >= REPEAT_WINDOW:
            log.warning(
                "%d connection(s) closed to stay within %d open connections (idle ones first)", self.count, self.limit
            )
            self.count = 0
            self.reported_at = now


def server_config(app: Any, settings: Settings, *, open_files: int) -> uvicorn.Config:
    limit = connection_limit(settings, open_files)
    protocol = type(
        "GuardedH11Protocol",
        (GuardedH11Protocol,),
        {
            "header_timeout": settings.header_timeout,
            "max_connections": limit,
            "on_evicted": staticmethod(_EvictionReport(limit)),
            "idle": {},
        },
    )
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        lifespan="on",
        log_level="info",
        http=protocol,
        # in-flight requests; the connection cap above keeps the connection count below it
        limit_concurrency=limit + 16,
        timeout_keep_alive=max(1, round(settings.keepalive_timeout)),
        backlog=accept_burst(open_files),
    )


# ---------------------------------------------------------------- log lines


class RepeatFilter(logging.Filter):
    """Holds back a line repeated more than `per_window` times a window; the next one let through says how many."""

    def __init__(
        self,
        per_window: int = REPEATS_PER_WINDOW,
        window: float = REPEAT_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.per_window = per_window
        self.window = window
        self.clock = clock
        self._seen: dict[tuple[str, int, str], list[float | int]] = {}  # key -> [window start, count, held]

    def filter(self, record: logging.LogRecord) -> bool:
        # the text itself: plugins' lines all share the template "%s", and only repeats are the flood
        key = (record.name, record.levelno, record.getMessage()[:300])
        now = self.clock()
        entry = self._seen.get(key)
        if entry is None or now - entry[0] >= self.window:
            held = int(entry[2]) if entry is not None else 0
            self._seen[key] = [now, 1, 0]
            if len(self._seen) > 4096:  # bounded: forget the oldest windows
                for stale in sorted(self._seen, key=lambda k: self._seen[k][0])[:1024]:
                    self._seen.pop(stale, None)
            if held:
                record.msg = f"{record.msg} [{held} similar line(s) held back in the last {self.window:g} s]"
            return True
        entry[1] = int(entry[1]) + 1
        if entry[1] <= self.per_window:
            return True
        entry[2] = int(entry[2]) + 1
        return False


class QueryStringFilter(logging.Filter):
    """The access log shows paths without their query string (it may carry tokens or personal data)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0], *args[3:])
        return True


def quiet_repeats() -> None:
    """Every handler of the root and uvicorn loggers holds back repeated lines."""
    repeat = RepeatFilter()
    for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access"):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(repeat)


def hide_query_strings() -> None:
    logging.getLogger("uvicorn.access").addFilter(QueryStringFilter())
