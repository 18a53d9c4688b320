"""`webhook.deliver`: POST a JSON payload to a tenant's receiver, signed and replay-safe.

The receiver checks `Tenantry-Signature: t=<unix seconds>,v1=<hex>` where `v1` is
HMAC-SHA256 of `"<t>.<raw body>"` under the tenant's webhook signing secret, and refuses a `t`
too far from its own clock (replays). `Tenantry-Delivery` is the same on every attempt of a
job, so a receiver that deduplicates on it acts once even when a delivery is retried.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import socket
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx
from pydantic import AnyHttpUrl, Field

from tenantry.jobs.kinds import (
    JobContext,
    JobKind,
    JobResult,
    PayloadModel,
    PermanentJobError,
    RetryableJobError,
)

SIGNATURE_HEADER = "Tenantry-Signature"
DELIVERY_HEADER = "Tenantry-Delivery"
EVENT_HEADER = "Tenantry-Event"

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class WebhookPayload(PayloadModel):
    url: AnyHttpUrl = Field(description="The receiver (http or https).")
    event: str = Field(default="message", min_length=1, max_length=100)
    body: dict[str, Any] = Field(description="The JSON object to deliver.")


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header value a receiver recomputes to trust a delivery."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes, *, tolerance_seconds: float = 300) -> bool:
    """What a receiver does (and what the tests do): check the MAC and the timestamp."""
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance_seconds:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), header)


def _is_internal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


async def check_destination(host: str, port: int, allowed: Sequence[IpNetwork]) -> None:
    """Refuse hosts resolving to private, loopback or link-local addresses (SSRF), unless
    the platform allowed that network. Every resolved address must pass, so a name with one
    public and one internal address is refused."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise RetryableJobError(f"cannot resolve {host}: {error.strerror}") from error
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if _is_internal(address) and not any(address in network for network in allowed):
            raise PermanentJobError(
                f"refused destination {host} ({address}): private, loopback and link-local "
                "addresses are not allowed (worker.webhook_allowed_networks)"
            )


def retry_after_seconds(value: str | None) -> float | None:
    """`Retry-After` as delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


class WebhookDeliver(JobKind[WebhookPayload]):
    name: ClassVar[str] = "webhook.deliver"
    payload_model = WebhookPayload
    soft_time_limit_seconds: ClassVar[float] = 30.0
    time_limit_seconds: ClassVar[float] = 45.0
    max_attempts: ClassVar[int] = 8

    async def run(self, context: JobContext, payload: WebhookPayload) -> JobResult:
        secret = context.tenant.webhook_signing_secret
        if not secret:
            raise PermanentJobError(f"tenant {context.tenant.tenant_id} has no signing secret")
        url = str(payload.url)
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        await check_destination(host, port, context.settings.webhook_allowed_networks)
        breakers = context.breakers
        wait = breakers.blocked_for(host)
        if wait > 0:
            raise RetryableJobError(f"circuit open for {host}", retry_after=wait)
        body = json.dumps(payload.body, separators=(",", ":"), sort_keys=True).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "tenantry-webhooks/1",
            SIGNATURE_HEADER: sign(secret, int(time.time()), body),
            DELIVERY_HEADER: str(context.job_id),
            EVENT_HEADER: payload.event,
        }
        try:
            async with httpx.AsyncClient(
                timeout=context.settings.webhook_timeout_seconds, follow_redirects=False
            ) as client:
                response = await client.post(url, content=body, headers=headers)
        except httpx.HTTPError as error:
            breakers.failed(host)
            raise RetryableJobError(f"{type(error).__name__} posting to {host}") from error
        status = response.status_code
        if status == 429 or status >= 500:
            breakers.failed(host)
            raise RetryableJobError(
                f"receiver answered {status}",
                retry_after=retry_after_seconds(response.headers.get("Retry-After")),
            )
        breakers.succeeded(host)
        if status >= 300:
            raise PermanentJobError(f"receiver answered {status}; not retried")
        return JobResult(document={"status_code": status, "delivery_id": str(context.job_id)})
