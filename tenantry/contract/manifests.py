"""Reading `ApiTenant`, `RateLimitPolicy` and `ApiPlatform` manifests from YAML files.

`tenantry validate` and `tenantry dev` use this; every error names the file, the document,
the object and the field, so a typo is found without a cluster.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tenantry.contract.policy import effective_limits
from tenantry.contract.registry import ProductRoutes, product_entry
from tenantry.contract.resources import (
    API_VERSION,
    GROUP,
    ApiPlatform,
    ApiProduct,
    ApiTenant,
    RateLimitPolicy,
    ResourceKind,
)

_FIELD_PREFIX = re.compile(r"^(?P<field>[A-Za-z][\w.\[\]]*): (?P<message>.*)$", re.DOTALL)


class ManifestError(ValueError):
    """One or more manifests are invalid; `problems` lists each, already located."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def describe_validation_error(error: ValidationError) -> list[str]:
    """`field.path: message` for each problem, in the manifest's own (camelCase) names."""
    lines = []
    for problem in error.errors():
        parts = [str(part) for part in problem["loc"]]
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "value_error" and (match := _FIELD_PREFIX.match(message)):
            # A cross-field rule names its own field: "burst: burst requires ...".
            parts.append(match["field"])
            message = match["message"]
        location = ".".join(parts)
        lines.append(f"{location}: {message}" if location else message)
    return lines


KINDS: dict[str, ResourceKind] = {
    RateLimitPolicy.kind_name: RateLimitPolicy,
    ApiTenant.kind_name: ApiTenant,
    ApiPlatform.kind_name: ApiPlatform,
    ApiProduct.kind_name: ApiProduct,
}


def parse_manifest(document: Any) -> RateLimitPolicy | ApiTenant | ApiPlatform | ApiProduct:
    """Validate one decoded document; raises `ManifestError` naming each bad field."""
    if not isinstance(document, dict):
        raise ManifestError([f"expected a mapping, got {type(document).__name__}"])
    if document.get("apiVersion") != API_VERSION:
        raise ManifestError(
            [f"apiVersion: expected {API_VERSION!r}, got {document.get('apiVersion')!r}"]
        )
    kind = document.get("kind")
    model = KINDS.get(str(kind))
    if model is None:
        raise ManifestError([f"kind: expected one of {sorted(KINDS)}, got {kind!r}"])
    try:
        return model.model_validate(document)
    except ValidationError as error:
        raise ManifestError(describe_validation_error(error)) from error


@dataclass
class ManifestSet:
    """Everything a set of files declares, checked as a whole."""

    policies: dict[tuple[str, str], RateLimitPolicy] = field(default_factory=dict)
    tenants: dict[tuple[str, str], ApiTenant] = field(default_factory=dict)
    platforms: dict[tuple[str, str], ApiPlatform] = field(default_factory=dict)
    products: dict[tuple[str, str], ApiProduct] = field(default_factory=dict)

    def by_kind(self, kind: str) -> dict[tuple[str, str], Any]:
        buckets: dict[str, dict[tuple[str, str], Any]] = {
            "RateLimitPolicy": self.policies,
            "ApiTenant": self.tenants,
            "ApiPlatform": self.platforms,
            "ApiProduct": self.products,
        }
        return buckets[kind]

    def policy_for(self, tenant: ApiTenant, platform_namespace: str) -> RateLimitPolicy | None:
        ref = tenant.spec.policy_ref
        return self.policies.get((ref.namespace or platform_namespace, ref.name))


def _is_ours(document: Any) -> bool:
    """Objects of other API groups (the tenants' Namespaces, say) may share the files; a
    document of ours with a wrong version or kind is still checked, and refused."""
    if not isinstance(document, dict):
        return True
    return str(document.get("apiVersion", "")).split("/")[0] in ("", GROUP)


def _manifest_files(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix in {".yaml", ".yml"})
        else:
            yield path


def load_manifests(paths: Iterable[Path], platform_namespace: str) -> ManifestSet:
    """Load and check every manifest under `paths`; raise `ManifestError` listing all problems.

    Beyond each object's own schema this checks what only the whole set can tell: duplicate
    objects, a tenant whose tier (policy) does not exist, overrides that break the tier's rules,
    a product outside the platform namespace, a route two products declare.
    """
    found = ManifestSet()
    problems: list[str] = []
    files = list(_manifest_files(paths))
    if not files:
        raise ManifestError([f"no manifests found in {', '.join(str(p) for p in paths)}"])
    for file in files:
        try:
            documents = list(yaml.safe_load_all(file.read_text()))
        except (OSError, yaml.YAMLError) as error:
            problems.append(f"{file}: {error}")
            continue
        for index, document in enumerate(documents, start=1):
            if document is None or not _is_ours(document):
                continue
            where = f"{file} (document {index}"
            if isinstance(document, dict):
                name = (document.get("metadata") or {}).get("name", "?")
                where += f", {document.get('kind', '?')} {name}"
            where += ")"
            try:
                resource = parse_manifest(document)
            except ManifestError as error:
                problems.extend(f"{where}: {problem}" for problem in error.problems)
                continue
            key = (resource.metadata.namespace or platform_namespace, resource.metadata.name)
            bucket: dict[tuple[str, str], Any] = found.by_kind(resource.kind)
            if key in bucket:
                problems.append(f"{where}: {resource.kind} {key[0]}/{key[1]} is declared twice")
            bucket[key] = resource
    for (namespace, name), tenant in found.tenants.items():
        policy = found.policy_for(tenant, platform_namespace)
        ref = tenant.spec.policy_ref
        if policy is None:
            policy_namespace = ref.namespace or platform_namespace
            problems.append(
                f"ApiTenant {namespace}/{name}: spec.policyRef.name: unknown tier "
                f"{ref.name!r} (no RateLimitPolicy in namespace {policy_namespace})"
            )
            continue
        try:
            effective_limits(policy.spec, tenant.spec.overrides)
        except ValidationError as error:
            problems.extend(
                f"ApiTenant {namespace}/{name}: spec.overrides.{line}"
                for line in describe_validation_error(error)
            )
    for namespace, name in found.products:
        if namespace != platform_namespace:
            problems.append(
                f"ApiProduct {namespace}/{name}: metadata.namespace: products live in the "
                f"platform namespace {platform_namespace!r}, where the platform team keeps them"
            )
    merged = ProductRoutes.merge(
        product_entry(product)
        for (namespace, _), product in found.products.items()
        if namespace == platform_namespace
    )
    for name, lost in sorted(merged.conflicts.items()):
        problems.extend(f"ApiProduct {platform_namespace}/{name}: spec.routes: {c}" for c in lost)
    if problems:
        raise ManifestError(problems)
    return found
