"""All configuration in one typed object, read from `TENANTRY_*` environment variables.

Nested groups use `__`: `TENANTRY_API__PORT=8080` sets `settings.api.port`. Defaults are the
embedded ones `tenantry dev` runs on; the Helm chart sets the production values.
"""

from __future__ import annotations

from functools import lru_cache
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ApiSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    check_port: int | None = Field(
        default=8081,
        ge=1,
        le=65535,
        description="The gateway check's own listener (`/authz/`, same host); null: not served.",
    )
    workers: int = Field(default=1, ge=1, description="uvicorn worker processes")
    keepalive_seconds: int = Field(default=5, ge=1)
    graceful_shutdown_seconds: int = Field(default=20, ge=0)
    limit_max_requests: int | None = Field(
        default=None, ge=1, description="Recycle a worker process after this many requests."
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1)
    trusted_proxies: list[IPv4Network | IPv6Network] = Field(
        default=[], description="Peers whose X-Forwarded-For is believed (CIDRs)."
    )
    tenant_metrics_label: bool = Field(
        default=False, description="Label request metrics by tenant (bounded by tenant count)."
    )
    replicas: int = Field(
        default=1, ge=1, description="API replicas sharing a tenant's rate in `local` mode."
    )
    local_usage_max_entries: int = Field(
        default=100_000,
        ge=1,
        description="(tenant, minute, route) cells of usage held in process while Redis is away.",
    )
    usage_merge_interval_seconds: float = Field(default=1.0, gt=0)
    auth_failures_per_minute: int = Field(
        default=30, ge=1, description="Failed authentications one client address may make."
    )
    auth_failures_burst: int = Field(default=10, ge=0)
    probe_timeout_seconds: float = Field(default=1.0, gt=0)
    readiness_requires_redis: bool = Field(
        default=False,
        description="Report not-ready while Redis is down (off: tenants' failureMode serves).",
    )
    access_log: bool = Field(default=True, description="One JSON line per request.")
    usage_cache_seconds: int = Field(default=10, ge=1, description="TTL of cached /v1/usage.")
    database_timeout_seconds: float = Field(
        default=2.0, gt=0, description="The longest a request waits on the database."
    )

    @property
    def processes(self) -> int:
        """API processes sharing a tenant's rate in `local` mode: each replica's workers."""
        return self.replicas * self.workers

    @model_validator(mode="after")
    def _check_has_its_own_port(self) -> ApiSettings:
        if self.check_port == self.port:
            raise ValueError(
                f"check_port: {self.check_port} is the API's port; the gateway check needs a "
                "listener of its own that public routes never reach"
            )
        return self


class RegistrySettings(BaseModel):
    source: Literal["file", "kubernetes"] = "file"
    manifests: list[Path] = Field(
        default=[Path("examples")], description="Files or folders the file source reads."
    )
    shard_count: int = Field(
        default=1024,
        ge=1,
        le=4096,
        description=(
            "Registry Secrets the tenants are spread over. Many small shards keep each write, "
            "and its watch echo, small; a shard is only created once a tenant lands in it."
        ),
    )
    keys_file: Path = Field(
        default=Path(".tenantry-dev/keys.json"),
        description="Where the file source keeps issued keys, so they survive restarts.",
    )
    poll_interval_seconds: float = Field(
        default=2.0, gt=0, description="How often the file source looks for changed manifests."
    )


class WorkerSettings(BaseModel):
    concurrency: int = Field(default=4, ge=1)
    heartbeat_file: Path = Path("/tmp/tenantry-worker-heartbeat")  # noqa: S108 - emptyDir in pods
    heartbeat_interval_seconds: float = Field(default=10.0, gt=0)
    usage_flush_interval_seconds: float = Field(default=30.0, gt=0)
    metrics_port: int = Field(default=9091, ge=1, le=65535)
    broker_url: str | None = Field(
        default=None,
        description="Celery broker: `redis://` or `amqp://` (RabbitMQ); defaults to `redis_url`.",
    )
    visibility_timeout_seconds: int = Field(
        default=3600,
        ge=10,
        description="Redis broker redelivery of unacknowledged messages; must exceed the "
        "longest job time limit or a running job would be delivered twice.",
    )
    broker_consumer_timeout_seconds: int = Field(
        default=1800,
        ge=10,
        description="RabbitMQ broker's `consumer_timeout` (its default: 30 minutes), as "
        "configured on the broker: it must exceed the longest job time limit plus "
        "`retry_max_seconds`, or a running job would be delivered twice.",
    )
    soft_shutdown_timeout_seconds: float = Field(
        default=20.0,
        ge=0,
        description="On SIGQUIT or Ctrl+C, how long running jobs may finish before being "
        "re-queued (SIGTERM waits for them; the pod's grace period bounds it).",
    )
    job_lease_seconds: float = Field(
        default=30.0, gt=0, description="A running job's lease; renewed every third of it."
    )
    outbox_interval_seconds: float = Field(default=15.0, gt=0)
    outbox_grace_seconds: float = Field(
        default=120.0,
        gt=0,
        description="A queued job not started this long after its enqueue is enqueued again.",
    )
    retry_base_seconds: float = Field(default=2.0, gt=0)
    retry_max_seconds: float = Field(default=600.0, gt=0)
    concurrency_retry_seconds: float = Field(
        default=2.0, gt=0, description="Wait before retrying a job whose tenant has no free slot."
    )
    outcome_deadline_seconds: float = Field(
        default=120.0,
        gt=0,
        description="How long a finished job keeps trying to record its outcome while "
        "PostgreSQL is unreachable.",
    )
    idempotency_retention_hours: float = Field(default=24.0, gt=0)
    idempotency_trim_interval_seconds: float = Field(default=3600.0, gt=0)
    usage_flush_grace_seconds: float = Field(
        default=5.0, ge=0, description="A minute's bucket is flushed this long after it closes."
    )
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    webhook_allowed_networks: list[IPv4Network | IPv6Network] = Field(
        default=[],
        description="Private, loopback or link-local networks webhooks may reach (SSRF "
        "protection refuses them otherwise).",
    )
    breaker_failure_threshold: int = Field(default=5, ge=1)
    breaker_cooldown_seconds: float = Field(default=30.0, gt=0)
    heartbeat_max_age_seconds: float = Field(
        default=60.0, gt=0, description="The liveness probe fails past this heartbeat age."
    )
    beat_schedule_file: Path = Path("/tmp/tenantry-beat-schedule")  # noqa: S108 - emptyDir


class OperatorSettings(BaseModel):
    namespaces: list[str] = Field(
        default=[], description="Namespaces whose tenants are reconciled; empty means all."
    )
    field_manager: str = "tenantry-operator"
    liveness_endpoint: str = "http://0.0.0.0:8080/healthz"
    metrics_port: int = Field(default=9090, ge=1, le=65535)
    peering_name: str = Field(
        default="tenantry", description="Kopf peering object: one active operator per name."
    )
    peering_priority: int = Field(default=0, description="Higher wins among peers.")
    standalone: bool = Field(default=False, description="Run without peering (tests, dev).")
    resync_interval_seconds: float = Field(
        default=300.0, gt=0, description="Backstop re-check of every tenant (watches do the rest)."
    )
    retry_delay_seconds: float = Field(
        default=10.0, gt=0, description="Delay before retrying a pass the API server refused."
    )
    reconcile_concurrency: int = Field(
        default=16, ge=1, description="Tenants re-reconciled at once after a policy change."
    )
    platform_debounce_seconds: float = Field(
        default=0.5, ge=0, description="Wait after a tenant change before recomputing HPAs."
    )
    watch_reconnect_seconds: float = Field(default=1.0, gt=0)
    idle_timeout_seconds: float = Field(
        default=5.0, gt=0, description="How long an idle per-object worker lingers."
    )
    consistency_timeout_seconds: float = Field(
        default=5.0, gt=0, description="Longest wait for the echo of Kopf's own patch."
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TENANTRY_", env_nested_delimiter="__", extra="forbid"
    )

    environment: Literal["dev", "staging", "prod"] = "dev"
    platform_namespace: str = "tenantry-system"
    database_url: str = "sqlite+aiosqlite:///./.tenantry-dev/tenantry.db"
    redis_url: str | None = Field(
        default=None,
        description="Redis for limits, usage and (without `worker.broker_url`) the broker; "
        "any node of a Redis or Valkey Cluster works too (found on first contact); none in dev.",
    )
    redis_timeout_seconds: float = Field(default=0.25, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"

    api: ApiSettings = ApiSettings()
    registry: RegistrySettings = RegistrySettings()
    worker: WorkerSettings = WorkerSettings()
    operator: OperatorSettings = OperatorSettings()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once from the environment."""
    return Settings()
