"""configSchema cannot stall or steer the host (issue 14, finding 3).

Through a real `serve`: a catastrophic regex and a `$ref` fan-out are validated off the
event loop and bounded while /healthz is sampled; remote `$ref`s and unbounded schemas are
refused at install without the host fetching anything.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from plugin_host.config_schema import MAX_SCHEMA_DEPTH, config_errors, schema_problems
from plugin_host.host import HostError
from plugin_host.manifest import ManifestError, load_manifest
from tests.support import ServeProcess, zips

ADMIN = "adm1n-" + "c" * 40
AUTH = {"Authorization": f"Bearer {ADMIN}"}
# generous: a sample only fails when the loop was blocked (the catastrophic regex blocks it for minutes)
HEALTHZ_BOUND = 3.0


def fan_out(levels: int) -> dict[str, Any]:
    """Each level refers to the next one twice: 2**levels evaluations per value."""
    defs: dict[str, Any] = {
        f"d{i}": {"allOf": [{"$ref": f"#/$defs/d{i + 1}"}, {"$ref": f"#/$defs/d{i + 1}"}]} for i in range(levels)
    }
    defs[f"d{levels}"] = {"type": "integer"}
    return {
        "$defs": defs,
        "type": "object",
        "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/d0"}}},
    }


def package(plugin_id: str, config_schema: dict[str, Any]) -> bytes:
    files = zips.plugin_files(plugin_id=plugin_id, configSchema=config_schema)
    return zips.build(files)


@contextmanager
def healthz_sampled(base: str) -> Iterator[list[float | None]]:
    """Sample /healthz every 50 ms while the block runs; each sample is its latency (None: no answer)."""
    samples: list[float | None] = []
    done = threading.Event()

    def sample() -> None:
        with httpx.Client(timeout=HEALTHZ_BOUND) as client:
            while not done.is_set():
                began = time.monotonic()
                try:
                    ok = client.get(base + "/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                samples.append(time.monotonic() - began if ok else None)
                done.wait(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        done.set()
        thread.join(timeout=HEALTHZ_BOUND + 1)


def install(server: ServeProcess, data: bytes) -> httpx.Response:
    return httpx.post(
        server.base + "/api/plugins", content=data, headers={**AUTH, "Content-Type": "application/zip"}, timeout=30
    )


@pytest.mark.slow
def test_costly_schemas_never_stall_a_real_serve(tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0)
    remote = f"http://127.0.0.1:{listener.getsockname()[1]}/schema.json"
    server = ServeProcess(tmp_path / "home", cwd=tmp_path, env={"CHANNEL_RUNTIME_ADMIN_TOKEN": ADMIN})
    try:
        server.wait_ready()

        # a remote $ref is refused at install, and nothing is fetched
        answer = install(server, package("remote_ref", {"type": "object", "$ref": remote}))
        assert answer.status_code == 400, answer.text
        assert "not local" in answer.json()["error"]["message"]
        with pytest.raises(BlockingIOError):
            listener.accept()

        # an exponential $ref fan-out is refused at install
        answer = install(server, package("fan_out", fan_out(30)))
        assert answer.status_code == 400, answer.text
        assert "expands to more than" in answer.json()["error"]["message"]

        # the catastrophic regex of the red team: validated on RE2, off the loop
        regex_schema = {"type": "object", "properties": {"name": {"type": "string", "pattern": "^(a+)+$"}}}
        assert install(server, package("regex_plugin", regex_schema)).status_code == 201
        with healthz_sampled(server.base) as regex_samples:
            answer = httpx.put(
                server.base + "/api/plugins/regex_plugin/config",
                json={"name": "a" * 40 + "!"},
                headers=AUTH,
                timeout=30,
            )
            time.sleep(0.3)  # a few samples after the answer too
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["code"] == "invalid_config"
        assert regex_samples and all(s is not None and s < HEALTHZ_BOUND for s in regex_samples), regex_samples

        # a fan-out small enough to install, times a large config: the validation budget stops it
        assert install(server, package("fan_small", fan_out(9))).status_code == 201
        with healthz_sampled(server.base) as fan_samples:
            answer = httpx.put(
                server.base + "/api/plugins/fan_small/config",
                json={"items": list(range(100_000))},
                headers=AUTH,
                timeout=60,
            )
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["code"] == "config_too_costly"
        assert fan_samples and all(s is not None and s < HEALTHZ_BOUND for s in fan_samples), fan_samples
        # nothing was saved
        view = httpx.get(server.base + "/api/plugins/fan_small", headers=AUTH, timeout=10).json()
        assert view["config"] in ({}, None)
    finally:
        listener.close()
        server.stop()


def test_install_rules_name_the_problem() -> None:
    deep: dict[str, Any] = {"type": "object"}
    for _ in range(MAX_SCHEMA_DEPTH + 2):
        deep = {"type": "object", "properties": {"x": deep}}
    assert "deeper than" in schema_problems(deep)[0]["message"]
    assert "not local" in schema_problems({"$dynamicRef": "https://example.org/s"})[0]["message"]
    problem = schema_problems({"properties": {"a": {"type": "string", "pattern": "(?=lookahead)a"}}})[0]
    assert problem["path"] == "/configSchema/properties/a/pattern" and "RE2" in problem["message"]
    # ordinary schemas, local refs and recursion included, pass
    tree = {
        "$defs": {
            "node": {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}
        },
        "$ref": "#/$defs/node",
    }
    assert schema_problems(tree) == []
    assert schema_problems(fan_out(8)) == []


def test_manifest_refusals_are_400s_not_500s() -> None:
    with pytest.raises(ManifestError) as info:
        load_manifest(b'{"a":' * 3000 + b"1" + b"}" * 3000)
    assert info.value.code == "manifest_invalid_json" and "nested deeper" in info.value.message
    with pytest.raises(ManifestError) as info:
        load_manifest(zips.manifest_bytes(configSchema={"type": "object", "$ref": "http://127.0.0.1:9/x"}))
    assert info.value.code == "manifest_schema"


def test_validation_is_budgeted_and_uses_re2() -> None:
    manifest = load_manifest(zips.manifest_bytes(configSchema=fan_out(9)))
    with pytest.raises(HostError) as info:
        config_errors(manifest, {"items": list(range(100_000))})
    assert (info.value.code, info.value.status) == ("config_too_costly", 422)
    assert config_errors(manifest, {"items": [1, 2, 3]}) == []
    assert config_errors(manifest, {"items": ["x"]})[0]["path"] == "/items/0"

    regex = load_manifest(
        zips.manifest_bytes(configSchema={"type": "object", "properties": {"name": {"pattern": "^(a+)+$"}}})
    )
    assert config_errors(regex, {"name": "a" * 100_000}) == []
    assert "does not match" in config_errors(regex, {"name": "a" * 100_000 + "!"})[0]["message"]
