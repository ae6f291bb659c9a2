"""A plugin's `configSchema`: checked at install, and admin config validated against it (SPEC 7.3: 422).

A configSchema is third-party input that the host evaluates, so it is bounded twice:

- at install (`schema_problems`, called by the manifest check): at most
  `MAX_SCHEMA_DEPTH` levels and `MAX_SCHEMA_NODES` subschemas; every `$ref` local
  (`#...`: the host never fetches a URL); its local `$ref` graph may not expand
  past `MAX_SCHEMA_EXPANSION` subschemas per instance value (an exponential
  fan-out would take hours); every `pattern` compiles in RE2;
- when validating (`validate_config`): off the event loop, in a worker thread,
  with a budget of `VALIDATION_BUDGET` keyword evaluations (deterministic: a
  costly validation stops with `config_too_costly`, 422), under a time limit; regexes
  run on RE2 (linear time: `^(a+)+$` costs what it reads), and no reference is
  ever retrieved from the network.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import jsonschema
import re2
import referencing
import referencing.exceptions
from jsonschema import Draft202012Validator, ValidationError

from .host import HostError
from .manifest import Manifest

MAX_SCHEMA_DEPTH = 32
MAX_SCHEMA_NODES = 5_000
MAX_SCHEMA_EXPANSION = 10_000
VALIDATION_BUDGET = 200_000  # keyword evaluations for one config (a real one needs hundreds)
VALIDATION_TIMEOUT = 10.0  # seconds; the budget ends a validation well before
MAX_ERRORS = 50

_REF_KEYS = ("$ref", "$dynamicRef")
_budget: contextvars.ContextVar[list[int]] = contextvars.ContextVar("config_validation_budget")


class _BudgetExceeded(Exception):
    pass


# ---------------------------------------------------------------- install-time rules


def schema_problems(schema: Any, prefix: str = "/configSchema") -> list[dict[str, str]]:
    """What makes `schema` unsafe to evaluate, as {path, message} items (empty: it may be installed)."""
    problems: list[dict[str, str]] = []
    nodes = 0
    stack: list[tuple[Any, str, int]] = [(schema, prefix, 0)]
    while stack:
        node, path, depth = stack.pop()
        if depth > MAX_SCHEMA_DEPTH:
            return [{"path": path, "message": f"configSchema is nested deeper than {MAX_SCHEMA_DEPTH} levels"}]
        nodes += 1
        if nodes > MAX_SCHEMA_NODES:
            return [{"path": prefix, "message": f"configSchema has more than {MAX_SCHEMA_NODES} parts"}]
        if isinstance(node, dict):
            for key in _REF_KEYS:
                ref = node.get(key)
                if isinstance(ref, str) and not ref.startswith("#"):
                    problems.append(
                        {
                            "path": f"{path}/{key}",
                            "message": f"{key} {ref[:200]!r} is not local: a configSchema refers only to its own "
                            "parts ('#/$defs/...'); the host never fetches schemas",
                        }
                    )
            pattern = node.get("pattern")
            if isinstance(pattern, str):
                problems += _pattern_problem(pattern, f"{path}/pattern")
            pattern_properties = node.get("patternProperties")
            if isinstance(pattern_properties, dict):
                for name in pattern_properties:
                    problems += _pattern_problem(str(name), f"{path}/patternProperties")
            for key, value in node.items():
                if isinstance(value, (dict, list)):
                    stack.append((value, f"{path}/{key}", depth + 1))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                if isinstance(value, (dict, list)):
                    stack.append((value, f"{path}/{i}", depth + 1))
    if not problems and isinstance(schema, dict):
        try:
            expansion = _expansion(schema)
        except RecursionError:  # a $ref chain thousands long: no real config needs that
            expansion = MAX_SCHEMA_EXPANSION + 1
        if expansion > MAX_SCHEMA_EXPANSION:
            problems.append(
                {
                    "path": prefix,
                    "message": f"configSchema's $ref graph expands to more than {MAX_SCHEMA_EXPANSION} subschemas "
                    "for one value (each $ref is evaluated again wherever it is used)",
                }
            )
    return problems


def _pattern_problem(pattern: str, path: str) -> list[dict[str, str]]:
    try:
        _compiled(pattern)
    except re2.error as exc:
        reason = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        return [
            {
                "path": path,
                "message": f"pattern {pattern[:200]!r} is not supported ({reason}): configSchema patterns use RE2 "
                "syntax (no backreferences or lookaround) so that matching takes linear time",
            }
        ]
    return []


def _expansion(schema: dict[str, Any]) -> int:
    """Subschemas evaluated for one instance value, following local `$ref`s (cycles count once, capped)."""
    cost: dict[str, int] = {}

    def resolve(ref: str) -> Any:
        target: Any = schema
        for raw in ref.removeprefix("#").split("/")[1:]:
            part = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and part in target:
                target = target[part]
            elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
            else:
                return None
        return target

    def size(node: Any, active: frozenset[str]) -> int:
        total = 1
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and (ref == "#" or ref.startswith("#/")):
                if ref in active:
                    pass  # recursion: bounded by the instance's depth, counted once
                elif ref in cost:
                    total += cost[ref]
                else:
                    cost[ref] = MAX_SCHEMA_EXPANSION + 1  # provisional, in case of a cycle through it
                    cost[ref] = size(resolve(ref), active | {ref})
                    total += cost[ref]
            for key, value in node.items():
                if key not in ("$defs", "definitions") and isinstance(value, (dict, list)):
                    total += size(value, active)
                if total > MAX_SCHEMA_EXPANSION:
                    return total
        elif isinstance(node, list):
            for value in node:
                total += size(value, active)
                if total > MAX_SCHEMA_EXPANSION:
                    return total
        return total

    return size(schema, frozenset())


def _re2_options() -> Any:
    options = re2.Options()
    options.log_errors = False  # a refused pattern is our error to report, not a line on the host's stderr
    return options


_RE2_OPTIONS = _re2_options()


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str) -> Any:
    return re2.compile(pattern, _RE2_OPTIONS)


# ---------------------------------------------------------------- validation


def _counted(keyword: Callable[..., Iterator[ValidationError]]) -> Callable[..., Iterator[ValidationError]]:
    def run(validator: Any, value: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
        budget = _budget.get()
        budget[0] -= 1
        if budget[0] < 0:
            raise _BudgetExceeded
        return keyword(validator, value, instance, schema)

    return run


def _re2_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _compiled(pattern).search(instance):
        yield ValidationError(f"{instance[:200]!r} does not match {pattern!r}")


def _re2_pattern_properties(
    validator: Any, patterns: dict[str, Any], instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        compiled = _compiled(pattern)
        for key, value in instance.items():
            if compiled.search(key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


_keywords = dict(Draft202012Validator.VALIDATORS)
_keywords.update(pattern=_re2_pattern, patternProperties=_re2_pattern_properties)
ConfigValidator = jsonschema.validators.extend(
    Draft202012Validator, validators={name: _counted(fn) for name, fn in _keywords.items()}
)


def _no_retrieval(uri: str) -> referencing.Resource[Any]:
    raise referencing.exceptions.NoSuchResource(ref=uri)  # type: ignore[call-arg]


def config_errors(manifest: Manifest, config: Any, *, budget: int = VALIDATION_BUDGET) -> list[dict[str, str]]:
    """Schema errors of `config` ({path, message}), at most `MAX_ERRORS`; blocking (see `validate_config`).

    Raises `HostError("config_too_costly")` when the budget runs out.
    """
    # a registry that never retrieves: an unknown reference is an error, not a fetch
    registry: referencing.Registry[Any] = referencing.Registry(retrieve=_no_retrieval)  # type: ignore[call-arg]
    validator = ConfigValidator(manifest.config_schema, registry=registry)
    token = _budget.set([budget])
    errors: list[ValidationError] = []
    try:
        for error in validator.iter_errors(config):
            errors.append(error)
            if len(errors) >= MAX_ERRORS:
                break
    except _BudgetExceeded:
        raise _too_costly(manifest, f"it needed more than {budget} schema evaluations") from None
    except (referencing.exceptions.Unresolvable, jsonschema.exceptions.SchemaError, RecursionError) as exc:
        why = "a $ref cannot be resolved" if isinstance(exc, referencing.exceptions.Unresolvable) else "it is invalid"
        raise HostError(
            "invalid_config_schema", f"the configSchema of {manifest.id} cannot be evaluated: {why}", status=422
        ) from None
    finally:
        _budget.reset(token)
    return [
        {"path": "/" + "/".join(str(p) for p in e.absolute_path), "message": e.message}
        for e in sorted(errors, key=lambda e: list(map(str, e.absolute_path)))
    ]


def _too_costly(manifest: Manifest, why: str) -> HostError:
    return HostError(
        "config_too_costly",
        f"the config was not validated against the configSchema of {manifest.id}: {why}; "
        "nothing was saved (a smaller config, or a simpler schema in a new plugin version)",
        status=422,
    )


async def validate_config(manifest: Manifest, config: Any) -> None:
    """Validate off the event loop (a worker thread: jsonschema is blocking CPU work), bounded twice."""
    try:
        with anyio.fail_after(VALIDATION_TIMEOUT):
            # abandon_on_cancel: the budget ends the thread soon after; the loop does not wait for it
            errors = await anyio.to_thread.run_sync(
                functools.partial(config_errors, manifest, config), abandon_on_cancel=True
            )
    except TimeoutError:
        raise _too_costly(manifest, f"it took longer than {VALIDATION_TIMEOUT:g} s") from None
    if errors:
        raise HostError(
            "invalid_config",
            f"config does not match the configSchema of {manifest.id}: {errors[0]['message']}",
            {"errors": errors},
            status=422,
        )


__all__ = [
    "config_errors",
    "schema_problems",
    "validate_config",
]
