"""Validate the Gateway API and Envoy Gateway objects the chart renders, as their CRDs would.

kubernetes-validate knows only Kubernetes' own kinds. These kinds are held against the
upstream `openAPIV3Schema`s vendored in `schemas/` (see its README), the way the API server
applies them (`tests.harness.crd_schema`).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from tests.harness import crd_schema

SCHEMAS = Path(__file__).resolve().parent / "schemas"


def schema_path(api_version: str, kind: str) -> Path:
    return SCHEMAS / f"{api_version.replace('/', '_')}_{kind}.json"


@cache
def _schema(api_version: str, kind: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(schema_path(api_version, kind).read_text())
    return loaded


def schema_errors(manifest: dict[str, Any]) -> list[str]:
    """What the API server, with the kind's CRD installed, would refuse in `manifest`."""
    where = f"{manifest['kind']}/{manifest['metadata']['name']}"
    schema = _schema(manifest["apiVersion"], manifest["kind"])
    return [f"{where}: {error}" for error in crd_schema.schema_errors(schema, manifest)]
