"""Validate a custom resource the way the Kubernetes API server would with our CRDs.

The API server defaults, then validates the structural OpenAPI schema, the list-type map keys
and the `x-kubernetes-validations` CEL rules, and refuses unknown fields (kubectl's strict
field validation). This does the same with `jsonschema` and a real CEL interpreter, so tests
can hold a manifest against the generated CRD without a cluster.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml
from celpy.adapter import json_to_cel

CRDS = Path(__file__).resolve().parents[2] / "crds"


@cache
def crd_schemas() -> dict[str, dict[str, Any]]:
    """`{kind: openAPIV3Schema}` read from the committed `crds/` files."""
    schemas = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        schemas[crd["spec"]["names"]["kind"]] = crd["spec"]["versions"][0]["schema"][
            "openAPIV3Schema"
        ]
    return schemas


def _closed(schema: Any) -> Any:
    """Unknown fields are errors, as with `kubectl apply` (strict field validation)."""
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _closed(value) for key, value in schema.items()}
    is_open = "additionalProperties" in out or out.get("x-kubernetes-preserve-unknown-fields")
    if out.get("type") == "object" and "properties" in out and not is_open:
        out["additionalProperties"] = False
    return out


def _apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    if isinstance(value, dict):
        for name, prop in schema.get("properties", {}).items():
            if name not in value and "default" in prop:
                value[name] = copy.deepcopy(prop["default"])
            if name in value:
                value[name] = _apply_defaults(prop, value[name])
    elif isinstance(value, list) and "items" in schema:
        return [_apply_defaults(schema["items"], item) for item in value]
    return value


# Property names Kubernetes escapes as `__name__` in CEL, because they are CEL keywords.
CEL_RESERVED = frozenset(
    """true false null in as break const continue else for function if import let loop
    package namespace return var void while""".split()  # noqa: SIM905 (a table to read)
)


def _escaped(value: Any) -> Any:
    """The value as CEL rules see it: reserved property names become `__name__`."""
    if isinstance(value, dict):
        return {
            (f"__{key}__" if key in CEL_RESERVED else key): _escaped(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_escaped(item) for item in value]
    return value


_CEL = celpy.Environment()


@cache
def _program(rule: str) -> Any:
    return _CEL.program(_CEL.compile(rule))


def _rule_errors(schema: dict[str, Any], value: Any, path: str) -> list[str]:
    errors = []
    if isinstance(value, dict | list):
        for rule in schema.get("x-kubernetes-validations", []):
            if not bool(_program(rule["rule"]).evaluate({"self": json_to_cel(_escaped(value))})):
                field = rule.get("fieldPath", "")
                errors.append(f"{path}{field}: {rule['message']}")
    if isinstance(value, dict):
        for name, prop in schema.get("properties", {}).items():
            if name in value:
                errors.extend(_rule_errors(prop, value[name], f"{path}.{name}"))
    elif isinstance(value, list) and "items" in schema:
        keys = schema.get("x-kubernetes-list-map-keys")
        if schema.get("x-kubernetes-list-type") == "map" and keys:
            seen: set[tuple[Any, ...]] = set()
            for index, item in enumerate(value):
                identity = tuple(item.get(k) for k in keys)
                if identity in seen:
                    duplicate = dict(zip(keys, identity, strict=True))
                    errors.append(f"{path}[{index}]: Duplicate value: {duplicate}")
                seen.add(identity)
        for index, item in enumerate(value):
            errors.extend(_rule_errors(schema["items"], item, f"{path}[{index}]"))
    return errors


def crd_errors(manifest: dict[str, Any]) -> list[str]:
    """What the API server would refuse in `manifest`, one line per problem (empty: admitted)."""
    schema = crd_schemas().get(manifest.get("kind", ""))
    if schema is None:
        return [f"kind: no CRD for {manifest.get('kind')!r}"]
    return schema_errors(schema, manifest)


def schema_errors(schema: dict[str, Any], manifest: dict[str, Any]) -> list[str]:
    """What the API server, with a CRD of this `openAPIV3Schema` installed, would refuse in
    `manifest`."""
    # Every object may carry these, whether or not its CRD's schema names them.
    envelope = {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
    }
    schema = {**schema, "properties": {**envelope, **schema.get("properties", {})}}
    value = _apply_defaults(schema, copy.deepcopy(manifest))
    validator = jsonschema.Draft4Validator(
        _closed(schema), format_checker=jsonschema.FormatChecker()
    )
    errors = [
        f"{'.'.join(str(p) for p in error.absolute_path)}: {error.message}"
        for error in validator.iter_errors(value)
    ]
    return errors or _rule_errors(schema, value, "")
