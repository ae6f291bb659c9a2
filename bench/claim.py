"""Queue claim cost: `inbox.claim_ready(16)` with 100, 1,000 and 5,000 entries waiting.

    .venv/bin/python bench/claim.py [--quick] [--json]

Our SQLite store walks the `inbox_heads` index (one row per conversation head, in
id order) and stops at the limit. Reference, measured on the same file in the
same run: the previous design's claim, kept below verbatim, which grouped every
live entry by conversation to find the heads on each claim.

Layouts of the waiting entries:
- `64 conversations`: entries spread round-robin over 64 peers (like bench/e2e.py);
- `1 per conversation`: every entry its own conversation (all are heads);
- `16 busy`: 16 conversations whose heads are claimed by running handlers and hold
  every other entry back: the claim finds nothing to do, and must find that fast.
Each figure is the median over repeats of the mean time of one claim (a
`BEGIN IMMEDIATE` transaction: select, mark claimed, commit). Between claims the
claimed entries are handed back (`retry` with no delay; not timed), so the size
stays what the row says.

Target: our claim with 5,000 waiting <= 2x our claim with 100 waiting (flat).
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import Report, median, parser, progress  # noqa: E402
from channel_runtime.messages import InboundMessage  # noqa: E402
from channel_runtime.store import Store, open_store  # noqa: E402

SIZES = (100, 1_000, 5_000)
LAYOUTS = ("64 conversations", "1 per conversation", "16 busy")
LIMIT = 16
LEASE = 300.0

# the previous design's claim (schema version 1), for reference
OLD_CLAIM = (
    "SELECT q.id FROM inbox q JOIN (SELECT MIN(id) AS head FROM inbox"
    "  WHERE status IN ('pending', 'claimed') GROUP BY channel_id, conversation) h"
    " ON q.id = h.head"
    " WHERE (q.status = 'pending' AND q.next_attempt_at <= ?)"
    "    OR (q.status = 'claimed' AND q.claimed_until <= ?)"
    " ORDER BY q.id LIMIT ?"
)


def old_claim(conn: sqlite3.Connection, now: float, limit: int) -> list[int]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        ids = [r[0] for r in conn.execute(OLD_CLAIM, (now, now, limit))]
        if ids:
            marks = ",".join("?" * len(ids))
            conn.execute(
                f"UPDATE inbox SET status = 'claimed', claimed_until = ?, attempts = attempts + 1, updated_at = ?"
                f" WHERE id IN ({marks}) RETURNING *",
                (now + LEASE, now, *ids),
            ).fetchall()
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return ids


def peer(layout: str, i: int) -> str:
    if layout == "64 conversations":
        return f"p{i % 64}"
    if layout == "16 busy":
        return f"p{i % 16}"
    return f"p{i}"


async def fill(store: Store, layout: str, size: int) -> None:
    count = size + (16 if layout == "16 busy" else 0)  # the busy heads come on top of the waiting entries
    for i in range(count):
        message = InboundMessage(
            message_id=f"m{i}", channel_id="ch", kind="bench", peer_id=peer(layout, i), peer_type="dm", content="x" * 64
        )
        await store.inbox.commit(message)
    if layout == "16 busy":
        assert len(await store.inbox.claim_ready(16, lease=1e9)) == 16


async def measure(path: Path, layout: str, size: int, claims: int) -> dict[str, float]:
    store = await open_store(f"sqlite:///{path}")
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("PRAGMA synchronous = NORMAL")  # as the store's own connection, so only the query differs
    raw.execute("PRAGMA busy_timeout = 5000")
    try:
        await fill(store, layout, size)
        timings: dict[str, list[float]] = {"ours": [], "previous": []}
        for _ in range(claims):
            start = time.perf_counter()
            entries = await store.inbox.claim_ready(LIMIT)
            timings["ours"].append(time.perf_counter() - start)
            for entry in entries:
                await store.inbox.retry(entry.id, "bench", 0.0)

            now = time.time()
            start = time.perf_counter()
            ids = old_claim(raw, now, LIMIT)
            timings["previous"].append(time.perf_counter() - start)
            for entry_id in ids:
                await store.inbox.retry(entry_id, "bench", 0.0)
        return {name: sum(values) / len(values) * 1e6 for name, values in timings.items()}
    finally:
        raw.close()
        await store.aclose()


def plans(path: Path) -> list[list[Any]]:
    conn = sqlite3.connect(path)
    try:
        ours = (
            "SELECT id FROM inbox WHERE head = 1 AND ((status = 'pending' AND next_attempt_at <= ?1)"
            " OR (status = 'claimed' AND claimed_until <= ?1)) ORDER BY id LIMIT ?2"
        )
        rows = []
        for name, sql, params in (("ours", ours, (0, 16)), ("previous", OLD_CLAIM, (0, 0, 16))):
            for _, _, _, detail in conn.execute("EXPLAIN QUERY PLAN " + sql, params):
                rows.append([name, detail])
        return rows
    finally:
        conn.close()


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    repeats = 2 if args.quick else 5
    claims = 50 if args.quick else 200
    report = Report("bench/claim.py: inbox claim cost by queue size", args.quick)
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-claim-") as tmp:
        for layout in LAYOUTS:
            for size in SIZES:
                for rep in range(repeats):
                    progress(f"{layout}, {size} waiting, repeat {rep + 1}/{repeats} ...")
                    path = Path(tmp) / f"{layout.replace(' ', '_')}-{size}-{rep}.db"
                    results.setdefault((layout, size), []).append(anyio.run(measure, path, layout, size, claims))
        plan_rows = plans(Path(tmp) / f"16_busy-{SIZES[-1]}-0.db")
    rows = []
    for (layout, size), runs in results.items():
        ours, previous = median([r["ours"] for r in runs]), median([r["previous"] for r in runs])
        rows.append([layout, f"{size:,}", ours, previous, previous / ours])
    report.table(
        f"one claim_ready({LIMIT}), microseconds (mean of {claims} claims, median of {repeats} repeats)",
        ["layout", "waiting", "ours us", "previous us", "previous / ours"],
        rows,
    )
    report.table("EXPLAIN QUERY PLAN", ["claim", "plan"], plan_rows)
    for layout in LAYOUTS:
        flat = median([r["ours"] for r in results[(layout, SIZES[-1])]]) / median(
            [r["ours"] for r in results[(layout, SIZES[0])]]
        )
        report.check(f"ours {SIZES[-1]:,} / {SIZES[0]} waiting, {layout}", flat, "<= 2", "x")
    report.data = {f"{layout}/{size}": runs for (layout, size), runs in results.items()}
    report.emit(args.json)


if __name__ == "__main__":
    main()
