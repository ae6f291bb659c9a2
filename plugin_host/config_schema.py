"""Admin config of a plugin, validated against its manifest's `configSchema` (SPEC 7.3: 422)."""

from __future__ import annotations

from typing import Any

import jsonschema

from .host import HostError
from .manifest import Manifest


def config_errors(manifest: Manifest, config: Any) -> list[dict[str, str]]:
    validator = jsonschema.Draft202012Validator(manifest.config_schema)
    return [
        {"path": "/" + "/".join(str(p) for p in e.absolute_path), "message": e.message}
        for e in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    ]


def validate_config(manifest: Manifest, config: Any) -> None:
    errors = config_errors(manifest, config)
    if errors:
        raise HostError(
            "invalid_config",
            f"config does not match the configSchema of {manifest.id}: {errors[0]['message']}",
            {"errors": errors},
            status=422,
        )
