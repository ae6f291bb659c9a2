"""Answers every health check with a JSON-RPC error."""

import _wire

_wire.serve("health_errors", {"health": lambda i, p: _wire.error(i, -32603, "database unreachable")})
