"""CustomResourceDefinitions generated from the contract models.

`tenantry crds --out crds/` writes them; a test fails when the committed files differ. The
Pydantic JSON Schema of each spec and status is turned into a *structural* OpenAPI v3 schema
as Kubernetes requires: references inlined, `X | None` as an optional `X`, enums and bounds
kept, JSON-Schema-only keywords dropped, and each model's cross-field rules attached as
`x-kubernetes-validations` (CEL) on that model's object.
"""

from __future__ import annotations

from typing import Any

import yaml

from tenantry.contract import resources
from tenantry.contract.resources import (
    GROUP,
    RESOURCE_KINDS,
    VERSION,
    ContractModel,
    ResourceKind,
)

CATEGORIES = ["tenantry"]

READY_COLUMN = {
    "name": "Ready",
    "type": "string",
    "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
}
AGE_COLUMN = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}

PRINTER_COLUMNS: dict[str, list[dict[str, Any]]] = {
    "RateLimitPolicy": [
        {"name": "RPM", "type": "integer", "jsonPath": ".spec.requestsPerMinute"},
        {"name": "Burst", "type": "integer", "jsonPath": ".spec.burst"},
        {"name": "Quota", "type": "integer", "jsonPath": ".spec.monthlyQuota"},
        {"name": "Priority", "type": "string", "jsonPath": ".spec.jobPriority"},
        {"name": "Tenants", "type": "integer", "jsonPath": ".status.tenantCount"},
        READY_COLUMN,
        AGE_COLUMN,
    ],
    "ApiTenant": [
        {"name": "Tier", "type": "string", "jsonPath": ".spec.policyRef.name"},
        {"name": "Suspended", "type": "boolean", "jsonPath": ".spec.suspended"},
        {"name": "Keys", "type": "integer", "jsonPath": ".status.keyCount"},
        READY_COLUMN,
        {
            "name": "Reason",
            "type": "string",
            "priority": 1,
            "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
        },
        AGE_COLUMN,
    ],
    "ApiProduct": [
        {"name": "Display-Name", "type": "string", "jsonPath": ".spec.displayName"},
        {"name": "Routes", "type": "integer", "jsonPath": ".status.routeCount"},
        READY_COLUMN,
        AGE_COLUMN,
    ],
    "ApiPlatform": [
        {"name": "Tenants", "type": "integer", "jsonPath": ".status.activeTenants"},
        {"name": "API-Min", "type": "integer", "jsonPath": ".status.api.minReplicas"},
        {"name": "Worker-Min", "type": "integer", "jsonPath": ".status.worker.minReplicas"},
        READY_COLUMN,
        AGE_COLUMN,
    ],
}

# Keywords of JSON Schema that a structural OpenAPI v3 schema does not take.
_DROPPED = {"title", "$defs", "examples", "const", "discriminator"}


def _contract_models() -> dict[str, type[ContractModel]]:
    found: dict[str, type[ContractModel]] = {}
    for value in vars(resources).values():
        if isinstance(value, type) and issubclass(value, ContractModel):
            found[value.__name__] = value
    return found


def _structural(
    node: Any, defs: dict[str, Any], models: dict[str, type[ContractModel]], *, status: bool
) -> Any:
    if isinstance(node, list):
        return [_structural(item, defs, models, status=status) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        merged = {**defs[name], **{k: v for k, v in node.items() if k != "$ref"}}
        converted = _structural(merged, defs, models, status=status)
        model = models.get(name)
        if model is not None and model.cross_field_rules:
            converted["x-kubernetes-validations"] = [
                {"rule": rule.cel, "message": rule.message, "fieldPath": f".{rule.field_path}"}
                for rule in model.cross_field_rules
            ]
        return converted
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o != {"type": "null"}]
        if len(options) != 1:
            raise ValueError(f"a union of {len(options)} types has no structural schema: {node}")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        return _structural({**options[0], **rest}, defs, models, status=status)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED:
            continue
        if key == "default" and (value is None or status):
            continue
        if key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "properties":
            out[key] = {
                name: _structural(prop, defs, models, status=status) for name, prop in value.items()
            }
        elif key == "additionalProperties" and value is False:
            continue  # Kubernetes prunes unknown fields and kubectl refuses them (strict)
        elif key in {"items", "additionalProperties", "anyOf", "allOf", "oneOf", "not"}:
            out[key] = _structural(value, defs, models, status=status)
        else:
            out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if out.get("uniqueItems"):
        del out["uniqueItems"]  # not allowed in structural schemas; list-type "set" says it
    return out


def model_schema(model: type[ContractModel], *, status: bool = False) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of one contract model."""
    raw = model.model_json_schema(by_alias=True, mode="validation", ref_template="#/$defs/{model}")
    defs = raw.pop("$defs", {})
    defs[model.__name__] = raw
    schema: dict[str, Any] = _structural(
        {"$ref": f"#/$defs/{model.__name__}", "description": raw.get("description", "")},
        defs,
        _contract_models(),
        status=status,
    )
    return schema


def crd_for(kind: ResourceKind) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{kind.plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "tenantry"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind_name,
                "listKind": f"{kind.kind_name}List",
                "plural": kind.plural,
                "singular": kind.kind_name.lower(),
                "shortNames": list(kind.short_names),
                "categories": CATEGORIES,
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS[kind.kind_name],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": (kind.__doc__ or kind.kind_name).strip(),
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": model_schema(kind.spec_model),
                                "status": model_schema(kind.status_model, status=True),
                            },
                        }
                    },
                }
            ],
        },
    }


# Kopf's peering resources: the operator's replicas record themselves in one of these so that
# only one of them is active. Kopf ships no CRD of its own; these are the definitions its
# documentation gives (group kopf.dev), installed beside ours.
PEERING_GROUP = "kopf.dev"
PEERING_KINDS = (("ClusterKopfPeering", "clusterkopfpeerings", "Cluster"),
                 ("KopfPeering", "kopfpeerings", "Namespaced"))  # fmt: skip


def peering_crd(kind: str, plural: str, scope: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{PEERING_GROUP}",
            "labels": {"app.kubernetes.io/part-of": "tenantry"},
        },
        "spec": {
            "group": PEERING_GROUP,
            "scope": scope,
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "Kopf operators' peering: which replica is active.",
                            "properties": {
                                "status": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                }
                            },
                        }
                    },
                }
            ],
        },
    }


class _PlainDumper(yaml.SafeDumper):
    """Writes repeated subtrees out in full: CRDs are read by people, not by YAML tooling."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render_crds() -> dict[str, str]:
    """`{file name: YAML}` for every kind, as committed in `crds/`."""
    header = "# Generated by `tenantry crds` (tenantry/contract/crds.py). Do not edit.\n"
    documents = {f"{GROUP}_{kind.plural}.yaml": crd_for(kind) for kind in RESOURCE_KINDS}
    documents |= {
        f"{PEERING_GROUP}_{plural}.yaml": peering_crd(kind, plural, scope)
        for kind, plural, scope in PEERING_KINDS
    }
    return {
        name: header + yaml.dump(crd, Dumper=_PlainDumper, sort_keys=False, width=100)
        for name, crd in documents.items()
    }
