"""The ingest ceiling: a bare Starlette app doing one SQLite insert per bridge POST.

It also has a bare `/send` (decode the body, answer a send result; nothing stored,
no plugin): the reference of bench/sidecar.py's `/send` figures.

Same file location type and durability as our store (WAL, synchronous=NORMAL),
same body, same route; no auth, no validation, no dedupe, no inbox.
`BENCH_CEILING_DB` names the SQLite file.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

_db: dict[str, sqlite3.Connection] = {}


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    conn = sqlite3.connect(os.environ["BENCH_CEILING_DB"], isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE IF NOT EXISTS events (event_id TEXT PRIMARY KEY, body TEXT NOT NULL)")
    _db["conn"] = conn
    try:
        yield
    finally:
        conn.close()


async def events(request: Request) -> JSONResponse:
    body = await request.body()
    event = msgspec.json.decode(body)
    _db["conn"].execute("INSERT INTO events (event_id, body) VALUES (?, ?)", (event["eventId"], body.decode()))
    return JSONResponse({"accepted": True, "duplicate": False, "pending": True, "retryAfterSeconds": None})


async def send(request: Request) -> JSONResponse:
    body = msgspec.json.decode(await request.body())
    return JSONResponse({"providerMessageId": f"bare_{body['requestId']}", "duplicate": False})


app = Starlette(
    routes=[
        Route("/api/channel-connector-bridge/events", events, methods=["POST"]),
        Route("/send", send, methods=["POST"]),
    ],
    lifespan=lifespan,
)
