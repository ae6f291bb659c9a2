"""The webhook crypto against the research note's vector and against lark-oapi (the official SDK)."""

from __future__ import annotations

import base64
import hashlib
import json
import os

import pytest
from feishu_vendorcli.crypto import DecryptError, EventCipher, aes_key, signature, signature_matches
from hypothesis import given
from hypothesis import strategies as st

VECTOR_KEY = "test-key-123"
VECTOR_SHA256 = "625faa3fbbc3d2bd9d6ee7678d04cc5339cb33dc68d9b58451853d60046e226a"


def test_key_derivation_matches_the_research_vector() -> None:
    assert aes_key(VECTOR_KEY).hex() == VECTOR_SHA256


def test_round_trip_and_fixed_iv_layout() -> None:
    cipher = EventCipher(VECTOR_KEY)
    iv = bytes(range(16))
    encrypted = cipher.encrypt(b'{"challenge":"abc"}', iv)
    raw = base64.b64decode(encrypted)
    assert raw[:16] == iv and len(raw) % 16 == 0
    assert cipher.decrypt(encrypted) == b'{"challenge":"abc"}'


def test_lark_oapi_decrypts_what_we_encrypt_and_we_decrypt_what_it_would() -> None:
    from Crypto.Cipher import AES  # pycryptodome, lark-oapi's own dependency
    from lark_oapi.core.utils.decryptor import AESCipher

    plaintext = json.dumps({"schema": "2.0", "header": {"event_id": "e1"}, "event": {"x": "ü"}}).encode()
    ours = EventCipher(VECTOR_KEY).encrypt(plaintext)
    assert AESCipher(VECTOR_KEY).decrypt_str(ours).encode() == plaintext
    # the other direction: encrypt as the platform does, with pycryptodome, and decrypt with ours
    iv = os.urandom(16)
    pad = 16 - len(plaintext) % 16
    theirs = base64.b64encode(
        iv
        + AES.new(hashlib.sha256(VECTOR_KEY.encode()).digest(), AES.MODE_CBC, iv).encrypt(
            plaintext + bytes([pad]) * pad
        )
    ).decode()
    assert EventCipher(VECTOR_KEY).decrypt(theirs) == plaintext


def test_signature_matches_lark_oapi_verifier() -> None:
    from lark_oapi.core.model import RawRequest
    from lark_oapi.event.dispatcher_handler import EventDispatcherHandler

    body = b'{"encrypt":"abc"}'
    timestamp, nonce = "1780000000", "nonce-1"
    ours = signature(timestamp, nonce, VECTOR_KEY, body)
    assert ours == hashlib.sha256((timestamp + nonce + VECTOR_KEY).encode() + body).hexdigest()
    request = RawRequest()
    request.body = body
    request.headers = {"X-Lark-Request-Timestamp": timestamp, "X-Lark-Request-Nonce": nonce, "X-Lark-Signature": ours}
    EventDispatcherHandler()._verify_sign(request, VECTOR_KEY)  # raises AccessDeniedException on a mismatch
    request.headers["X-Lark-Signature"] = signature(timestamp, nonce, "other-key", body)
    with pytest.raises(Exception, match="signature"):
        EventDispatcherHandler()._verify_sign(request, VECTOR_KEY)


def test_signature_comparison() -> None:
    good = signature("1", "n", "k", b"body")
    assert signature_matches(good, good)
    assert signature_matches(good, good.upper())
    assert not signature_matches(good, good[:-1] + ("0" if good[-1] != "0" else "1"))
    assert not signature_matches(good, "")
    assert not signature_matches(good, "é" * 64)


@pytest.mark.parametrize(
    "encrypted",
    ["not base64!", base64.b64encode(b"short").decode(), base64.b64encode(os.urandom(33)).decode()],
)
def test_broken_ciphertexts_are_refused(encrypted: str) -> None:
    with pytest.raises(DecryptError):
        EventCipher(VECTOR_KEY).decrypt(encrypted)


def test_wrong_key_is_refused_or_garbage_never_passes_as_json() -> None:
    encrypted = EventCipher(VECTOR_KEY).encrypt(b'{"type":"url_verification","challenge":"c"}')
    try:
        plain = EventCipher("another-key").decrypt(encrypted)
    except DecryptError:
        return
    with pytest.raises(ValueError):
        json.loads(plain)


@given(st.binary(max_size=2000), st.text(min_size=1, max_size=40))
def test_round_trip_property(plaintext: bytes, key: str) -> None:
    cipher = EventCipher(key)
    assert cipher.decrypt(cipher.encrypt(plaintext)) == plaintext
