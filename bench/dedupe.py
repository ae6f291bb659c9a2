"""Bridge dedupe cost: `begin` + `complete` per pair, at 1k, 20k and 200k existing records.

    .venv/bin/python bench/dedupe.py [--quick] [--json]

Backends: our SQLite store (`sqlite:///...`, the store's own schema, pre-filled
with batched INSERTs) and the memory store (reference floor). Reference: the seed
design's JSON-file store, reimplemented minimally below (one dict persisted as
one JSON file, read and rewritten in full on every `begin` and `complete`), at
1k and 20k records. Each figure is the median over repeats of the mean cost of a
pair within a repeat; the rows measured in a repeat are removed before the next,
so the size stays what the row says.

Targets: SQLite flat (200k / 1k <= 1.3); SQLite >= 50x faster than the JSON file at 20k.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import Report, median, parser, progress  # noqa: E402
from channel_runtime.store import open_store  # noqa: E402
from channel_runtime.store.base import DEDUPE_IN_PROGRESS_TTL, dedupe_key  # noqa: E402

CONNECTION = "conn_benchdedupe"
SIZES = (1_000, 20_000, 200_000)
JSON_SIZES = (1_000, 20_000)


# ---------------------------------------------------------------- the reference: the seed's JSON-file store


class JsonFileDedupe:
    """A dict of records in ONE JSON file, re-read and rewritten whole on every call (the seed design).

    Same rules as SPEC 6.3: new -> processing; completed -> duplicate; processing
    and fresh -> in progress; stale processing or failed -> processed again.
    The rewrite goes through a temp file and a rename, without fsync, and uses
    the fastest stdlib encoding path (the cheaper choices: the reference is not handicapped).
    """

    def __init__(self, path: Path, ttl: float = DEDUPE_IN_PROGRESS_TTL) -> None:
        self.path = path
        self.ttl = ttl

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            with open(self.path, encoding="utf-8") as f:
                data: dict[str, dict[str, Any]] = json.load(f)
                return data
        except FileNotFoundError:
            return {}

    def _save(self, data: dict[str, dict[str, Any]]) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(data))  # one-shot C encoder: json.dump would stream through the slow Python one
        os.replace(tmp, self.path)

    async def begin(self, connection_id: str, event_id: str, message_id: str = "") -> tuple[str, str]:
        data = self._load()
        key = dedupe_key(connection_id, event_id)
        now = time.time()
        record = data.get(key)
        if record is None:
            data[key] = {
                "dedupeKey": key,
                "connectionId": connection_id,
                "eventId": event_id,
                "status": "processing",
                "firstSeenAt": now,
                "updatedAt": now,
                "deliveryAttempts": 1,
                "messageId": message_id,
                "lastError": None,
            }
            outcome = "new"
        elif record["status"] == "completed":
            return "duplicate", key
        elif record["status"] == "processing" and now - record["updatedAt"] < self.ttl:
            return "in_progress", key
        else:
            outcome = "stale" if record["status"] == "processing" else "retry"
            record.update(
                status="processing",
                updatedAt=now,
                deliveryAttempts=record["deliveryAttempts"] + 1,
                messageId=message_id or record["messageId"],
                lastError=None,
            )
        self._save(data)
        return outcome, key

    async def complete(self, key: str) -> bool:
        data = self._load()
        record = data.get(key)
        if record is None:
            return False
        record.update(status="completed", updatedAt=time.time(), lastError=None)
        self._save(data)
        return True


def prefill_json(path: Path, size: int) -> None:
    now = time.time()
    data = {}
    for i in range(size):
        key = dedupe_key(CONNECTION, f"evt_fill_{i}")
        data[key] = {
            "dedupeKey": key,
            "connectionId": CONNECTION,
            "eventId": f"evt_fill_{i}",
            "status": "completed",
            "firstSeenAt": now,
            "updatedAt": now,
            "deliveryAttempts": 1,
            "messageId": f"msg_fill_{i}",
            "lastError": None,
        }
    path.write_text(json.dumps(data), encoding="utf-8")


def drop_measured_json(path: Path) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({k: v for k, v in data.items() if "evt_fill_" in k}), encoding="utf-8")


# ---------------------------------------------------------------- our stores


def prefill_sqlite(path: Path, size: int) -> None:
    """Batched INSERTs into the store's own `bridge_dedupe` table (the schema the store created)."""
    now = time.time()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        batch = 10_000
        for start in range(0, size, batch):
            conn.executemany(
                "INSERT INTO bridge_dedupe (dedupe_key, connection_id, event_id, status, first_seen_at,"
                " updated_at, delivery_attempts, message_id, last_error) VALUES (?, ?, ?, 'completed', ?, ?, 1, ?, NULL)",
                (
                    (dedupe_key(CONNECTION, f"evt_fill_{i}"), CONNECTION, f"evt_fill_{i}", now, now, f"msg_fill_{i}")
                    for i in range(start, min(start + batch, size))
                ),
            )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def drop_measured_sqlite(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None, timeout=5)
    try:
        conn.execute("DELETE FROM bridge_dedupe WHERE event_id NOT LIKE 'evt_fill_%'")
    finally:
        conn.close()


async def pairs(dedupe: Any, pairs_count: int, tag: str) -> float:
    """Mean seconds of one begin + complete over `pairs_count` new events."""
    started = time.perf_counter()
    for i in range(pairs_count):
        result = await dedupe.begin(CONNECTION, f"evt_{tag}_{i}", f"msg_{tag}_{i}")
        key = result[1] if isinstance(result, tuple) else result.dedupe_key
        await dedupe.complete(key)
    return (time.perf_counter() - started) / pairs_count


async def measure_sqlite(tmp: Path, size: int, pairs_count: int, repeats: int) -> list[float]:
    path = tmp / f"dedupe_{size}.db"
    store = await open_store(f"sqlite:///{path}")
    await store.aclose()
    prefill_sqlite(path, size)
    store = await open_store(f"sqlite:///{path}")
    samples = []
    try:
        await pairs(store.bridge_dedupe, min(pairs_count, 200), f"warm{size}")  # page cache, statements
        drop_measured_sqlite(path)
        for rep in range(repeats):
            samples.append(await pairs(store.bridge_dedupe, pairs_count, f"s{size}r{rep}"))
            drop_measured_sqlite(path)
    finally:
        await store.aclose()
    return samples


async def measure_memory(size: int, pairs_count: int, repeats: int) -> list[float]:
    store = await open_store("memory://")
    try:
        dedupe = store.bridge_dedupe
        for i in range(size):
            begun = await dedupe.begin(CONNECTION, f"evt_fill_{i}", f"msg_fill_{i}")
            await dedupe.complete(begun.dedupe_key)
        return [await pairs(dedupe, pairs_count, f"m{size}r{rep}") for rep in range(repeats)]
    finally:
        await store.aclose()


async def measure_json(tmp: Path, size: int, pairs_count: int, repeats: int) -> list[float]:
    path = tmp / f"dedupe_{size}.json"
    prefill_json(path, size)
    dedupe = JsonFileDedupe(path)
    samples = []
    for rep in range(repeats):
        samples.append(await pairs(dedupe, pairs_count, f"j{size}r{rep}"))
        drop_measured_json(path)
    return samples


async def main_async(quick: bool) -> Report:
    report = Report("bench/dedupe.py: bridge dedupe begin + complete per pair", quick)
    repeats = 3 if quick else 7
    pairs_count = 300 if quick else 2000
    json_pairs = {1_000: 20 if quick else 100, 20_000: 4 if quick else 12}
    json_repeats = 3 if quick else 5
    sqlite_us: dict[int, float] = {}
    memory_us: dict[int, float] = {}
    json_us: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-dedupe-", dir=os.environ.get("BENCH_TMP")) as tmp_text:
        tmp = Path(tmp_text)
        for size in SIZES:
            progress(f"sqlite {size:,} records ...")
            sqlite_us[size] = median(await measure_sqlite(tmp, size, pairs_count, repeats)) * 1e6
            progress(f"memory {size:,} records ...")
            memory_us[size] = median(await measure_memory(size, pairs_count, repeats)) * 1e6
        for size in JSON_SIZES:
            progress(f"json file {size:,} records ...")
            json_us[size] = median(await measure_json(tmp, size, json_pairs[size], json_repeats)) * 1e6

    rows = []
    for size in SIZES:
        ref = json_us.get(size, float("nan"))
        rows.append(
            [
                f"{size:,}",
                sqlite_us[size],
                memory_us[size],
                ref,
                ref / sqlite_us[size] if size in json_us else float("nan"),
                sqlite_us[size] / sqlite_us[SIZES[0]],
            ]
        )
    report.table(
        f"µs per begin+complete pair (median of {repeats} repeats x {pairs_count} pairs; "
        f"JSON file: {json_repeats} repeats x {json_pairs[1_000]}/{json_pairs[20_000]} pairs)",
        ["existing records", "sqlite µs", "memory µs", "json-file µs (ref)", "json/sqlite x", "sqlite vs 1k"],
        rows,
    )
    flat = sqlite_us[SIZES[-1]] / sqlite_us[SIZES[0]]
    report.check("sqlite 200k / 1k cost ratio (flat)", flat, "<= 1.3")
    report.check("sqlite speed-up over the JSON-file store at 20k", json_us[20_000] / sqlite_us[20_000], ">= 50", "x")
    report.data = {
        "sqlite_us": sqlite_us,
        "memory_us": memory_us,
        "json_file_us": json_us,
        "repeats": repeats,
        "pairs": pairs_count,
    }
    return report


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    report = anyio.run(main_async, args.quick)
    report.emit(args.json)


if __name__ == "__main__":
    main()
