"""Answers `config.answers` health checks (default 2), then never again; other methods still work."""

import _wire

config: dict = {}
answered = [0]


def initialize(request_id, params):
    config.update(params.get("config") or {})
    _wire.result(request_id, _wire.init_result("health_stops"))


def health(request_id, params):
    if answered[0] < config.get("answers", 2):
        answered[0] += 1
        _wire.result(request_id, {"status": "ok"})


_wire.serve("health_stops", {"initialize": initialize, "health": health})
