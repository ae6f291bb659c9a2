"""The admin API (SPEC 7): `create_app(host=..., runtime=..., settings=...)`."""

from __future__ import annotations

from .app import create_app
from .errors import ApiError

__all__ = ["ApiError", "create_app"]
