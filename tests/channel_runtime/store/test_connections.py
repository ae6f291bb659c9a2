"""Connections (credentials encrypted at rest), connector sessions, key/value, and the cipher."""

from __future__ import annotations

import base64
import sqlite3
import stat
from pathlib import Path

import msgspec
import pytest
from cryptography.fernet import Fernet

from channel_runtime.crypto import (
    SECRET_KEY_ENV,
    CredentialCipher,
    CredentialDecryptError,
    fernet_key,
    load_cipher,
    load_or_create_key,
)
from channel_runtime.store import NotFoundError, StoreError, open_store
from plugin_host.clock import FakeClock

pytestmark = pytest.mark.anyio

SECRET = "app-secret-PLAINTEXT-7f3a9c"


@pytest.fixture
def cipher() -> CredentialCipher:
    return CredentialCipher.ephemeral()


# ---------------------------------------------------------------- connections


async def test_create_get_list_and_status(url: str, clock: FakeClock, cipher: CredentialCipher) -> None:
    async with await open_store(url, clock=clock, cipher=cipher) as store:
        conn = await store.connections.create(
            kind="feishu", plugin_id="feishu_vendorcli", display_name="Support bot", options={"mode": "link"}
        )
        assert conn.connection_id.startswith("conn_") and len(conn.connection_id) == len("conn_") + 24
        assert conn.channel_id == conn.connection_id and conn.status == "pending" and conn.error is None
        assert conn.options == {"mode": "link"} and not conn.has_credentials
        other = await store.connections.create(
            kind="weixin", plugin_id="weixin_vendorcli", channel_id="wx", status="pairing"
        )
        assert await store.connections.get(conn.connection_id) == conn
        assert await store.connections.get("conn_missing") is None

        clock.advance(5)
        failed = await store.connections.update_status(conn.connection_id, "error", "QR code expired")
        assert failed.status == "error" and failed.error == "QR code expired"
        assert failed.updated_at == conn.created_at + 5 and failed.created_at == conn.created_at
        ok = await store.connections.update_status(conn.connection_id, "connected")
        assert ok.error is None

        updated = await store.connections.update(
            other.connection_id, account_id="wx_bot", display_name="Bot", options={"x": 1}
        )
        assert (updated.account_id, updated.display_name, updated.options, updated.channel_id) == (
            "wx_bot",
            "Bot",
            {"x": 1},
            "wx",
        )

        assert [c.connection_id for c in await store.connections.list()] == [conn.connection_id, other.connection_id]
        assert [c.connection_id for c in await store.connections.list(status="pairing")] == [other.connection_id]
        assert [c.kind for c in await store.connections.list(kind="feishu")] == ["feishu"]
        assert await store.connections.list(plugin_id="nope") == []

        with pytest.raises(StoreError, match="unknown connection status"):
            await store.connections.update_status(conn.connection_id, "happy")  # type: ignore[arg-type]
        with pytest.raises(NotFoundError):
            await store.connections.update_status("conn_missing", "revoked")
        with pytest.raises(StoreError, match="already exists"):
            await store.connections.create(kind="feishu", plugin_id="p", connection_id=conn.connection_id)


async def test_credentials_round_trip_and_never_in_records(
    url: str, clock: FakeClock, cipher: CredentialCipher
) -> None:
    async with await open_store(url, clock=clock, cipher=cipher) as store:
        conn = await store.connections.create(kind="feishu", plugin_id="p")
        assert await store.connections.get_credentials(conn.connection_id) == {}
        await store.connections.set_credentials(conn.connection_id, {"appId": "cli_1", "appSecret": SECRET})
        assert await store.connections.get_credentials(conn.connection_id) == {"appId": "cli_1", "appSecret": SECRET}

        record = await store.connections.get(conn.connection_id)
        assert record is not None and record.has_credentials
        assert not hasattr(record, "credentials")
        for shown in (record, *(await store.connections.list())):
            assert SECRET not in msgspec.json.encode(shown).decode()
            assert SECRET not in repr(shown)
        with pytest.raises(NotFoundError):
            await store.connections.get_credentials("conn_missing")


async def test_credentials_are_encrypted_at_rest(tmp_path: Path, clock: FakeClock, cipher: CredentialCipher) -> None:
    path = tmp_path / "state.db"
    async with await open_store(f"sqlite:///{path}", clock=clock, cipher=cipher) as store:
        conn = await store.connections.create(kind="feishu", plugin_id="p")
        await store.connections.set_credentials(conn.connection_id, {"appSecret": SECRET})
        # while open, the data may sit in the WAL: look there too
        raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("state.db"))
        assert b"appSecret" not in raw and SECRET.encode() not in raw

    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("state.db"))
    assert SECRET.encode() not in raw
    db = sqlite3.connect(path)
    try:
        (token,) = db.execute("SELECT credentials FROM connections").fetchone()
    finally:
        db.close()
    assert SECRET.encode() not in token
    assert cipher.decrypt(bytes(token)) == {"appSecret": SECRET}


async def test_wrong_key_fails_clearly_and_rotation_works(tmp_path: Path, clock: FakeClock) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    old_key = Fernet.generate_key().decode()
    async with await open_store(url, clock=clock, cipher=CredentialCipher(old_key)) as store:
        conn = await store.connections.create(kind="feishu", plugin_id="p")
        await store.connections.set_credentials(conn.connection_id, {"appSecret": SECRET})

    async with await open_store(url, clock=clock, cipher=CredentialCipher("another long passphrase")) as store:
        with pytest.raises(CredentialDecryptError, match="CHANNEL_RUNTIME_SECRET_KEY") as info:
            await store.connections.get_credentials(conn.connection_id)
        assert SECRET not in str(info.value)
        assert (await store.connections.get(conn.connection_id)) is not None  # records still readable

    rotated = CredentialCipher(f"new passphrase for rotation, {old_key}")
    async with await open_store(url, clock=clock, cipher=rotated) as store:
        assert await store.connections.get_credentials(conn.connection_id) == {"appSecret": SECRET}


async def test_store_without_cipher_refuses_credentials(clock: FakeClock) -> None:
    async with await open_store("memory://", clock=clock) as store:
        conn = await store.connections.create(kind="feishu", plugin_id="p")
        with pytest.raises(StoreError, match="CredentialCipher"):
            await store.connections.set_credentials(conn.connection_id, {"a": "b"})


# ---------------------------------------------------------------- sessions


async def test_sessions(url: str, clock: FakeClock, cipher: CredentialCipher) -> None:
    async with await open_store(url, clock=clock, cipher=cipher) as store:
        conn = await store.connections.create(kind="weixin", plugin_id="weixin_vendorcli", status="pairing")
        with pytest.raises(NotFoundError):
            await store.sessions.create(connection_id="conn_missing", kind="weixin", plugin_id="p")
        session = await store.sessions.create(
            connection_id=conn.connection_id, kind="weixin", plugin_id="weixin_vendorcli"
        )
        assert session.session_id.startswith("cs_") and session.status == "pending" and session.view == {}

        clock.advance(2)
        view = {
            "sessionId": session.session_id,
            "kind": "weixin",
            "status": "connected",
            "instructions": ["Scan"],
            "metadata": {},
            "credentials": {"token": SECRET},
        }
        updated = await store.sessions.update(session.session_id, status="connected", view=view)
        assert updated.status == "connected" and updated.updated_at == session.created_at + 2
        assert "credentials" not in updated.view and updated.view["instructions"] == ["Scan"]
        assert SECRET not in msgspec.json.encode(await store.sessions.get(session.session_id)).decode()
        only_status = await store.sessions.update(session.session_id, status="error")
        assert only_status.view == updated.view

        with pytest.raises(StoreError, match="unknown connector session status"):
            await store.sessions.update(session.session_id, status="weird")
        with pytest.raises(NotFoundError):
            await store.sessions.update("cs_missing", status="error")

        second = await store.sessions.create(
            connection_id=conn.connection_id, kind="weixin", plugin_id="p", status="qr_ready"
        )
        assert [s.session_id for s in await store.sessions.list(connection_id=conn.connection_id)] == [
            session.session_id,
            second.session_id,
        ]
        assert [s.session_id for s in await store.sessions.list(status="qr_ready")] == [second.session_id]

        assert await store.connections.delete(conn.connection_id)
        assert not await store.connections.delete(conn.connection_id)
        assert await store.sessions.get(session.session_id) is None  # sessions go with their connection


async def test_key_value(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        assert await store.kv.get("cursor") is None
        assert await store.kv.get("cursor", "start") == "start"
        await store.kv.set("cursor", {"offset": 3, "ids": ["a"]})
        await store.kv.set("cursor", {"offset": 4})
        assert await store.kv.get("cursor") == {"offset": 4}
        assert await store.kv.delete("cursor")
        assert not await store.kv.delete("cursor")


# ---------------------------------------------------------------- cipher and key file


def test_cipher_round_trip_and_tamper_detection() -> None:
    cipher = CredentialCipher.ephemeral()
    token = cipher.encrypt({"token": SECRET, "n": 1})
    assert SECRET.encode() not in token and SECRET.encode() not in base64.urlsafe_b64decode(token)
    assert cipher.decrypt(token) == {"token": SECRET, "n": 1}
    tampered = bytearray(base64.urlsafe_b64decode(token))
    tampered[-40] ^= 1
    with pytest.raises(CredentialDecryptError):
        cipher.decrypt(base64.urlsafe_b64encode(bytes(tampered)))
    assert "masked" in repr(cipher)


def test_fernet_key_accepts_a_key_or_derives_one() -> None:
    key = Fernet.generate_key()
    assert fernet_key(key.decode()) == key
    derived = fernet_key("correct horse battery staple, but longer")
    assert derived == fernet_key("correct horse battery staple, but longer")  # deterministic
    assert derived != fernet_key("another passphrase") and len(base64.urlsafe_b64decode(derived)) == 32
    with pytest.raises(ValueError):
        fernet_key("  ")


def test_rotation_first_key_encrypts() -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    token = CredentialCipher(old).encrypt({"a": 1})
    both = CredentialCipher(f"{new},{old}")
    assert both.decrypt(token) == {"a": 1}
    rotated = both.rotate(token)
    assert CredentialCipher(new).decrypt(rotated) == {"a": 1}
    with pytest.raises(CredentialDecryptError):
        CredentialCipher(old).decrypt(both.encrypt({"a": 1}))


def test_load_or_create_key(tmp_path: Path) -> None:
    home = tmp_path / "home"
    key = load_or_create_key(home, env={})
    path = home / "secret-key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(home, env={}) == key  # generated once, then reused
    assert [p.name for p in home.iterdir()] == ["secret-key"]  # no temp file left behind
    assert fernet_key(key) == key.encode()
    assert load_or_create_key(home, env={SECRET_KEY_ENV: " my passphrase "}) == "my passphrase"
    assert load_or_create_key(home, env={SECRET_KEY_ENV: ""}) == key
    token = load_cipher(home, env={}).encrypt({"a": 1})
    assert load_cipher(home, env={}).decrypt(token) == {"a": 1}


async def test_cached_connection_records_see_writes_from_another_process(tmp_path: Path, clock: FakeClock) -> None:
    """The SQLite store caches connection records; a commit through another connection invalidates them."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    async with await open_store(url, clock=clock) as ours, await open_store(url, clock=clock) as theirs:
        record = await ours.connections.create(kind="echo", plugin_id="echo", status="connected")
        assert (await ours.connections.get(record.connection_id)).status == "connected"  # now cached
        await theirs.connections.update_status(record.connection_id, "revoked")
        assert (await ours.connections.get(record.connection_id)).status == "revoked"
        # our own writes refresh the cache without a round trip through another connection
        await ours.connections.update_status(record.connection_id, "error", "boom")
        assert (await ours.connections.get(record.connection_id)).error == "boom"
        await theirs.connections.delete(record.connection_id)
        assert await ours.connections.get(record.connection_id) is None
