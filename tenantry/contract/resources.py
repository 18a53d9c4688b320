"""Typed models of the `tenantry.io/v1alpha1` custom resources.

The CRDs in `crds/` are generated from these models (see `tenantry.contract.crds`), so a field,
default, bound or cross-field rule is declared once here and enforced both by Pydantic (in
`tenantry dev`, the operator and the API) and by the Kubernetes API server at admission.

Cross-field rules are written twice on purpose: as a CEL expression that the API server
evaluates (`x-kubernetes-validations`) and as the equivalent Python check. `rule()` keeps both
in one declaration, and the test suite evaluates the CEL side with a real CEL interpreter
against the same table of bad manifests, so they cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Final, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from tenantry.contract.scopes import ScopeName

GROUP = "tenantry.io"
VERSION = "v1alpha1"
API_VERSION: Final = "tenantry.io/v1alpha1"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
ORIGIN = r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$"
ROUTE_TEMPLATE = r"^/[A-Za-z0-9._~{}/-]*$"

# The largest sustained rate one tier may declare: one request per microsecond of Redis time
# is far beyond what one tenant can send, and keeps GCRA arithmetic exact in integers.
MAX_REQUESTS_PER_MINUTE = 60_000_000


@dataclass(frozen=True)
class CrossFieldRule:
    """A rule spanning several fields: CEL for the API server, a predicate for Python."""

    cel: str
    message: str
    field_path: str
    holds: Callable[[Any], bool]


class ContractModel(BaseModel):
    """Base of every contract model: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_enum_values=False,
    )

    # Cross-field rules of this object, evaluated by Pydantic after field validation and
    # emitted as `x-kubernetes-validations` on this object's schema in the CRD.
    cross_field_rules: ClassVar[tuple[CrossFieldRule, ...]] = ()

    @model_validator(mode="after")
    def _check_cross_field_rules(self) -> ContractModel:
        for rule in self.cross_field_rules:
            if not rule.holds(self):
                raise ValueError(f"{rule.field_path}: {rule.message}")
        return self

    def to_manifest(self) -> dict[str, Any]:
        """The object as it is written to Kubernetes: camelCase, no unset optionals."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class HttpMethod(StrEnum):
    GET = "GET"
    HEAD = "HEAD"
    POST = "POST"
    PUT = "PUT"
    PATCH = "PATCH"
    DELETE = "DELETE"


class JobPriority(StrEnum):
    """Which worker queue a tenant's jobs go to."""

    LOW = "low"
    DEFAULT = "default"
    HIGH = "high"

    @property
    def queue(self) -> str:
        return f"jobs.{self.value}"


class FailureMode(StrEnum):
    """What the API does for a tenant while Redis is unreachable."""

    OPEN = "open"  # serve, count usage in process, merge it once Redis is back
    CLOSED = "closed"  # refuse with 503 and Retry-After
    LOCAL = "local"  # an in-process GCRA per replica, the rate divided by the replica count


RequestsPerMinute = Annotated[
    int,
    Field(ge=1, le=MAX_REQUESTS_PER_MINUTE, description="Sustained requests per minute."),
]
Burst = Annotated[
    int,
    Field(ge=0, le=1_000_000, description="Extra requests allowed at once above the rate."),
]


def _burst_needs_rate(obj: Any) -> bool:
    return obj.burst is None or obj.requests_per_minute is not None


def _reserved_within_rate(obj: Any) -> bool:
    if obj.requests_per_minute is None or obj.reserved_requests_per_second is None:
        return True
    return bool(obj.reserved_requests_per_second * 60 <= obj.requests_per_minute)


BURST_NEEDS_RATE = CrossFieldRule(
    cel="!has(self.burst) || has(self.requestsPerMinute)",
    message="burst requires requestsPerMinute (a burst is extra requests above a rate)",
    field_path="burst",
    holds=_burst_needs_rate,
)
RESERVED_WITHIN_RATE = CrossFieldRule(
    cel=(
        "!has(self.requestsPerMinute) || !has(self.reservedRequestsPerSecond) || "
        "double(self.reservedRequestsPerSecond) * 60.0 <= double(self.requestsPerMinute)"
    ),
    message="reservedRequestsPerSecond cannot exceed requestsPerMinute / 60",
    field_path="reservedRequestsPerSecond",
    holds=_reserved_within_rate,
)


class RouteKey(ContractModel):
    """A route as policies, products and usage name it: method and path template."""

    method: HttpMethod = Field(description="HTTP method of the route.")
    path: str = Field(
        pattern=ROUTE_TEMPLATE,
        max_length=256,
        description="Path template, e.g. /v1/jobs/{job_id} or /flights/{flight_id}.",
    )


class RouteLimit(RouteKey):
    """A per-route override of the tier's rate, matched on method and path template."""

    requests_per_minute: RequestsPerMinute
    burst: Burst = 0


class PolicyFields(ContractModel):
    """The limits a tier sets and a tenant may override.

    All optional here so that `ApiTenant.spec.overrides` can name only what it changes;
    `RateLimitPolicySpec` gives them their defaults.
    """

    requests_per_minute: RequestsPerMinute | None = None
    burst: Burst | None = None
    monthly_quota: Annotated[
        int | None,
        Field(ge=1, description="Requests per UTC calendar month; absent means unlimited."),
    ] = None
    max_concurrent_jobs: Annotated[
        int | None, Field(ge=1, le=10_000, description="Jobs of one tenant running at once.")
    ] = None
    job_priority: Annotated[
        JobPriority | None, Field(description="Worker queue for the tenant's jobs.")
    ] = None
    reserved_requests_per_second: Annotated[
        float | None,
        Field(
            ge=0,
            le=1_000_000,
            description="Capacity guaranteed to every tenant of this tier; feeds autoscaling.",
        ),
    ] = None
    failure_mode: Annotated[
        FailureMode | None, Field(description="What the API does while Redis is unreachable.")
    ] = None

    cross_field_rules: ClassVar[tuple[CrossFieldRule, ...]] = (
        BURST_NEEDS_RATE,
        RESERVED_WITHIN_RATE,
    )


class PolicyOverrides(PolicyFields):
    """A tenant's changes to its tier; the rules are checked on the merged result (an
    override of `burst` alone is fine on a tier that sets a rate)."""

    cross_field_rules = ()


class RateLimitPolicySpec(PolicyFields):
    """A tier: the limits every tenant that refers to it gets."""

    max_concurrent_jobs: Annotated[
        int, Field(ge=1, le=10_000, description="Jobs of one tenant running at once.")
    ] = 4
    job_priority: Annotated[
        JobPriority, Field(description="Worker queue for the tenant's jobs.")
    ] = JobPriority.DEFAULT
    reserved_requests_per_second: Annotated[
        float,
        Field(
            ge=0,
            le=1_000_000,
            description="Capacity guaranteed to every tenant of this tier; feeds autoscaling.",
        ),
    ] = 0.0
    failure_mode: Annotated[
        FailureMode, Field(description="What the API does while Redis is unreachable.")
    ] = FailureMode.OPEN
    routes: Annotated[
        list[RouteLimit],
        Field(
            max_length=64,
            description="Per-route overrides of the rate, unique by method and path.",
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["method", "path"],
            },
        ),
    ] = []

    @model_validator(mode="after")
    def _routes_are_unique(self) -> RateLimitPolicySpec:
        seen: set[tuple[str, str]] = set()
        for index, route in enumerate(self.routes):
            key = (route.method.value, route.path)
            if key in seen:
                raise ValueError(
                    f"routes[{index}]: duplicate entry for {route.method.value} {route.path}"
                )
            seen.add(key)
        return self


class PolicyRef(ContractModel):
    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253, description="RateLimitPolicy name.")
    namespace: Annotated[
        str | None,
        Field(
            pattern=DNS_LABEL,
            max_length=63,
            description="Namespace of the policy; defaults to the platform namespace.",
        ),
    ] = None


class ApiKeySpec(ContractModel):
    name: str = Field(
        pattern=DNS_LABEL,
        max_length=63,
        description="Name of the key; the key Secret holds its plaintext under this name.",
    )
    expires_at: Annotated[
        datetime | None, Field(description="When the key stops working (RFC 3339).")
    ] = None
    scopes: Annotated[
        list[ScopeName] | None,
        Field(
            min_length=1,
            max_length=64,
            description="What the key may do (`resource:action`); absent means every scope.",
            json_schema_extra={"x-kubernetes-list-type": "set"},
        ),
    ] = None

    def granted_scopes(self) -> frozenset[str] | None:
        """The key's scopes; None when it holds every scope."""
        return frozenset(self.scopes) if self.scopes is not None else None


DEFAULT_ROTATION_GRACE_SECONDS = 24 * 3600


class ApiTenantSpec(ContractModel):
    """What a tenant admin declares."""

    display_name: str = Field(min_length=1, max_length=128, description="Human-readable name.")
    policy_ref: PolicyRef = Field(description="The tier this tenant belongs to.")
    overrides: Annotated[
        PolicyOverrides | None, Field(description="Changes to the tier's limits.")
    ] = None
    suspended: Annotated[bool, Field(description="A suspended tenant's keys are refused.")] = False
    allowed_origins: Annotated[
        list[Annotated[str, Field(pattern=ORIGIN, max_length=253)]],
        Field(
            max_length=64,
            description="Browser origins allowed by CORS, e.g. https://app.example.com.",
            json_schema_extra={"x-kubernetes-list-type": "set"},
        ),
    ] = []
    keys: Annotated[
        list[ApiKeySpec],
        Field(
            max_length=100,
            description="Named API keys; removing a name revokes that key.",
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
            },
        ),
    ] = []
    key_rotation_grace_period_seconds: Annotated[
        int,
        Field(
            ge=0,
            le=30 * 24 * 3600,
            description="How long a rotated key's previous secret stays valid.",
        ),
    ] = DEFAULT_ROTATION_GRACE_SECONDS

    @model_validator(mode="after")
    def _key_names_are_unique(self) -> ApiTenantSpec:
        seen: set[str] = set()
        for index, key in enumerate(self.keys):
            if key.name in seen:
                raise ValueError(f"keys[{index}].name: duplicate key name {key.name!r}")
            seen.add(key.name)
        return self


class HpaScalingPolicy(ContractModel):
    type: Literal["Pods", "Percent"]
    value: int = Field(ge=1)
    period_seconds: int = Field(ge=1, le=1800)


class HpaScalingRules(ContractModel):
    stabilization_window_seconds: Annotated[int | None, Field(ge=0, le=3600)] = None
    select_policy: Literal["Max", "Min", "Disabled"] | None = None
    policies: list[HpaScalingPolicy] | None = None


class HpaBehavior(ContractModel):
    """The `behavior` block of an autoscaling/v2 HorizontalPodAutoscaler, passed through."""

    scale_up: HpaScalingRules | None = None
    scale_down: HpaScalingRules | None = None


def _min_within_max(obj: Any) -> bool:
    return bool(obj.min_replicas <= obj.max_replicas)


class ScaledDeployment(ContractModel):
    deployment: str = Field(
        pattern=DNS_SUBDOMAIN, max_length=253, description="Name of the Deployment to scale."
    )
    min_replicas: Annotated[int, Field(ge=1, le=1000, description="Floor of the HPA.")] = 2
    max_replicas: Annotated[int, Field(ge=1, le=1000, description="Ceiling of the HPA.")] = 10
    capacity_per_replica: float = Field(
        gt=0,
        description=(
            "Measured capacity of one replica: requests/s for the API, concurrent jobs for "
            "the worker."
        ),
    )
    target_cpu_utilization_percent: Annotated[int, Field(ge=1, le=100)] = 70
    behavior: HpaBehavior | None = None

    cross_field_rules = (
        CrossFieldRule(
            cel="self.minReplicas <= self.maxReplicas",
            message="minReplicas cannot exceed maxReplicas",
            field_path="minReplicas",
            holds=_min_within_max,
        ),
    )


class ApiPlatformSpec(ContractModel):
    """The Deployments whose autoscaling the operator owns."""

    api: ScaledDeployment = Field(description="The API Deployment, scaled on requests/s.")
    worker: ScaledDeployment = Field(description="The worker Deployment, scaled on job slots.")


def _public_route_has_no_scopes(obj: Any) -> bool:
    return not (obj.public and obj.scopes)


PUBLIC_ROUTE_HAS_NO_SCOPES = CrossFieldRule(
    cel="!(has(self.public) && self.public) || !has(self.scopes) || size(self.scopes) == 0",
    message="a public route needs no key, so it cannot require scopes",
    field_path="scopes",
    holds=_public_route_has_no_scopes,
)


class UpstreamRoute(RouteKey):
    """One route of a product's upstream, as the gateway check admits it."""

    scopes: Annotated[
        list[ScopeName],
        Field(
            max_length=16,
            description="Scopes (`resource:action`) a key must hold for this route.",
            json_schema_extra={"x-kubernetes-list-type": "set"},
        ),
    ] = []
    public: Annotated[
        bool, Field(description="Admitted without a key, unlimited and unmetered.")
    ] = False

    cross_field_rules: ClassVar[tuple[CrossFieldRule, ...]] = (PUBLIC_ROUTE_HAS_NO_SCOPES,)


class ApiProductSpec(ContractModel):
    """A product behind the gateway check: the route table of its upstream."""

    display_name: Annotated[str, Field(max_length=128, description="Human-readable name.")] = ""
    routes: Annotated[
        list[UpstreamRoute],
        Field(
            min_length=1,
            max_length=512,
            description=(
                "The upstream's routes, unique by method and path template. A request to a "
                "path no product lists is admitted on the tenant's own limit."
            ),
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["method", "path"],
            },
        ),
    ]

    @model_validator(mode="after")
    def _routes_are_unique(self) -> ApiProductSpec:
        seen: dict[tuple[str, str], str] = {}
        for index, route in enumerate(self.routes):
            key = (route.method.value, route_shape(route.path))
            if key in seen:
                raise ValueError(
                    f"routes[{index}]: {route.method.value} {route.path} is the same route as "
                    f"{route.method.value} {seen[key]} (parameter names aside)"
                )
            seen[key] = route.path
        return self


_PARAMETER = re.compile(r"\{[^}]*\}")


def route_shape(path: str) -> str:
    """A path template with its parameters unnamed: `/a/{x}` and `/a/{y:int}` are one path."""
    return _PARAMETER.sub("{}", path)


# --- status ----------------------------------------------------------------------------------


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ContractModel):
    """A condition as the Kubernetes API conventions define it."""

    type: str = Field(pattern=r"^[A-Z][A-Za-z0-9]*$", max_length=316)
    status: ConditionStatus
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", max_length=1024)
    message: Annotated[str, Field(max_length=32768)] = ""
    observed_generation: Annotated[int | None, Field(ge=0)] = None
    last_transition_time: datetime


class EffectiveLimits(ContractModel):
    """A tenant's limits after its overrides are applied to its tier."""

    requests_per_minute: int | None = None
    burst: int = 0
    monthly_quota: int | None = None
    max_concurrent_jobs: int
    job_priority: JobPriority
    reserved_requests_per_second: float
    failure_mode: FailureMode
    routes: list[RouteLimit] = []


class IssuedKey(ContractModel):
    name: str
    key_id: str
    created_at: datetime
    expires_at: datetime | None = None
    previous_key_id: str | None = None
    previous_valid_until: datetime | None = None


class ApiTenantStatus(ContractModel):
    """What the operator issued and resolved for a tenant."""

    observed_generation: Annotated[int | None, Field(ge=0)] = None
    conditions: list[Condition] = []
    tier: str | None = None
    secret_name: str | None = None
    keys: list[IssuedKey] = []
    key_count: int = 0
    effective: EffectiveLimits | None = None


class RateLimitPolicyStatus(ContractModel):
    """What the operator observed of a tier."""

    observed_generation: Annotated[int | None, Field(ge=0)] = None
    conditions: list[Condition] = []
    tenant_count: int = 0


class ScalingStatus(ContractModel):
    reserved: float
    capacity_per_replica: float
    min_replicas: int
    max_replicas: int


class ApiPlatformStatus(ContractModel):
    """The autoscaling arithmetic the operator applied."""

    observed_generation: Annotated[int | None, Field(ge=0)] = None
    conditions: list[Condition] = []
    active_tenants: int = 0
    api: ScalingStatus | None = None
    worker: ScalingStatus | None = None


class ApiProductStatus(ContractModel):
    """What the operator published of a product."""

    observed_generation: Annotated[int | None, Field(ge=0)] = None
    conditions: list[Condition] = []
    route_count: int = 0


# --- resources -------------------------------------------------------------------------------


class ObjectMeta(BaseModel):
    """The part of `metadata` the contract reads; the API server owns the rest."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)

    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253)
    namespace: str | None = Field(default=None, pattern=DNS_LABEL, max_length=63)
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    generation: int | None = None
    uid: str | None = None


SpecT = TypeVar("SpecT", bound=ContractModel)
StatusT = TypeVar("StatusT", bound=ContractModel)


class Resource(ContractModel, Generic[SpecT, StatusT]):
    """A custom resource as stored in Kubernetes: apiVersion, kind, metadata, spec, status."""

    kind_name: ClassVar[str]
    plural: ClassVar[str]
    short_names: ClassVar[tuple[str, ...]]
    spec_model: ClassVar[type[ContractModel]]
    status_model: ClassVar[type[ContractModel]]

    api_version: Literal["tenantry.io/v1alpha1"] = API_VERSION
    kind: str
    metadata: ObjectMeta
    spec: SpecT
    status: StatusT | None = None

    @model_validator(mode="after")
    def _kind_matches(self) -> Resource[SpecT, StatusT]:
        if self.kind != self.kind_name:
            raise ValueError(f"kind: expected {self.kind_name!r}, got {self.kind!r}")
        return self

    @property
    def name(self) -> str:
        return self.metadata.name


class RateLimitPolicy(Resource[RateLimitPolicySpec, RateLimitPolicyStatus]):
    """A tier: sustained rate, burst, monthly quota, job capacity and Redis failure mode."""

    kind_name = "RateLimitPolicy"
    plural = "ratelimitpolicies"
    short_names = ("rlp", "tier")
    spec_model = RateLimitPolicySpec
    status_model = RateLimitPolicyStatus
    kind: Literal["RateLimitPolicy"] = "RateLimitPolicy"


class ApiTenant(Resource[ApiTenantSpec, ApiTenantStatus]):
    """A tenant of the API: its tier, overrides, CORS origins and named API keys."""

    kind_name = "ApiTenant"
    plural = "apitenants"
    short_names = ("tenant", "tenants", "at")
    spec_model = ApiTenantSpec
    status_model = ApiTenantStatus
    kind: Literal["ApiTenant"] = "ApiTenant"


class ApiPlatform(Resource[ApiPlatformSpec, ApiPlatformStatus]):
    """One per installation: the API and worker Deployments the operator autoscales."""

    kind_name = "ApiPlatform"
    plural = "apiplatforms"
    short_names = ("platform",)
    spec_model = ApiPlatformSpec
    status_model = ApiPlatformStatus
    kind: Literal["ApiPlatform"] = "ApiPlatform"


class ApiProduct(Resource[ApiProductSpec, ApiProductStatus]):
    """A product behind the gateway check: its upstream's routes and the scopes they need."""

    kind_name = "ApiProduct"
    plural = "apiproducts"
    short_names = ("product",)
    spec_model = ApiProductSpec
    status_model = ApiProductStatus
    kind: Literal["ApiProduct"] = "ApiProduct"


ResourceKind = type[RateLimitPolicy] | type[ApiTenant] | type[ApiPlatform] | type[ApiProduct]
RESOURCE_KINDS: tuple[ResourceKind, ...] = (RateLimitPolicy, ApiTenant, ApiPlatform, ApiProduct)
